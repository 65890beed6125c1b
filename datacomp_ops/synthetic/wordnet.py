"""A miniature WordNet in WordNet's own database format, and an ImageNet-21k-style class list over it.

The text-based baseline reads WordNet with NLTK from a local folder; real
WordNet cannot be fetched here, so the synthetic world writes a small one
that NLTK's reader parses as it parses WordNet 3.0: ``data.{pos}`` lines
addressed by their byte offsets (the synset ids), ``index.{pos}`` lemma
lines, ``lexnames`` and the morphological exception lists. Each synset is
(pos, lemmas, is an ImageNet-21k class).
"""

from __future__ import annotations

from pathlib import Path

from ..embedded.images import CLASSES, COLORS, SHAPES

_POS_FILE = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
_LEXNAMES = ["adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
             "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
             "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
             "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
             "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
             "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition",
             "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
             "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl"]
_LEX_OF_POS = {"n": _LEXNAMES.index("noun.shape"), "v": _LEXNAMES.index("verb.creation"),
               "a": _LEXNAMES.index("adj.all"), "r": _LEXNAMES.index("adv.all")}
_HEADER = "  1 This is a synthetic miniature of WordNet's database files, written for tests.\n" \
          "  2 WordNet 3.0 Copyright 2006 by Princeton University (format only; not its content).\n"

# The synthetic world's vocabulary: (pos, lemmas, an ImageNet-21k class). Order within a pos is the
# sense order NLTK returns: "picture" is a noun first, "plain" an adjective first (not a class).
SYNSETS: list[tuple[str, list[str], bool]] = (
    [("n", [shape], True) for shape in SHAPES]
    + [("n", [color], False) for color in COLORS]
    + [("n", ["photo", "photograph", "picture"], False), ("n", ["icon"], True), ("n", ["background"], False),
       ("v", ["picture", "show"], False), ("v", ["circle"], False), ("a", ["plain"], False),
       ("n", ["plain", "field"], True)]
)


def write_wordnet(out_dir: str | Path, synsets: list[tuple[str, list[str], bool]] = SYNSETS) -> dict:
    """Write the database files and ``imagenet21k_wordnet_ids.txt``; returns their paths and the class ids."""
    out = Path(out_dir)
    db = out / "wordnet"
    db.mkdir(parents=True, exist_ok=True)
    offsets: dict[str, list[tuple[int, list[str], bool]]] = {p: [] for p in _POS_FILE}
    for pos, file in _POS_FILE.items():
        data = _HEADER
        for lemmas_pos, lemmas, is_class in synsets:
            if lemmas_pos != pos:
                continue
            offset = len(data.encode())
            words = " ".join(f"{w} 0" for w in lemmas)
            frames = " 00" if pos == "v" else ""
            line = f"{offset:08d} {_LEX_OF_POS[pos]:02d} {pos} {len(lemmas):02x} {words} 000{frames} | {lemmas[0]}  \n"
            data += line
            offsets[pos].append((offset, lemmas, is_class))
        (db / f"data.{file}").write_text(data)
        index: dict[str, list[int]] = {}
        for offset, lemmas, _ in offsets[pos]:
            for lemma in lemmas:
                index.setdefault(lemma.lower(), []).append(offset)
        lines = [f"{lemma} {pos} {len(offs)} 0 {len(offs)} 0 {' '.join(f'{o:08d}' for o in offs)}  \n"
                 for lemma, offs in sorted(index.items())]
        (db / f"index.{file}").write_text(_HEADER + "".join(lines))
        (db / f"{file}.exc").write_text("")
    (db / "lexnames").write_text("".join(f"{i:02d}\t{name}\t{_pos_number(name)}\n"
                                         for i, name in enumerate(_LEXNAMES)))
    class_ids = [f"n{offset:08d}" for offset, _, is_class in offsets["n"] if is_class]
    ids_path = out / "imagenet21k_wordnet_ids.txt"
    ids_path.write_text("\n".join(class_ids) + "\n")
    # MetaCLIP's entries are WordNet lemmas plus frequent Wikipedia n-grams and titles: here, the lemmas
    # and the class names of the synthetic world
    entries = sorted({lemma for _, lemmas, _ in synsets for lemma in lemmas} | set(CLASSES))
    entries_path = out / "metaclip_entries.txt"
    entries_path.write_text("\n".join(entries) + "\n")
    return {"wordnet_dir": str(db), "imagenet21k_ids": str(ids_path), "class_ids": class_ids,
            "metaclip_entries": str(entries_path)}


def _pos_number(lexname: str) -> int:
    return {"adj": 3, "adv": 4, "noun": 1, "verb": 2}[lexname.split(".")[0]]
