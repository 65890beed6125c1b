"""The text-based baseline's test: some caption word whose first WordNet synset is an ImageNet-21k class.

As DataComp's ``does_contain_text_entity``: words are ``caption.split()``,
each looked up with NLTK's ``wordnet.synsets(word)``; the first synset's
offset is compared with the offsets of the class list's WordNet ids
(``n01440764`` -> 1440764). WordNet is read from a local folder in WordNet's
database format (``nltk_data/corpora/wordnet``: ``data.noun``,
``index.noun``...), the class list from DataComp's
``imagenet21k_wordnet_ids.txt``. Each distinct word is looked up once.
"""

from __future__ import annotations

import functools
import os
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..core.config import ConfigError
from . import language


@functools.cache
def _wordnet_reader():
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class LocalWordNet(WordNetCorpusReader):
        """NLTK's reader of a WordNet folder named by path, without the Open Multilingual WordNet mapping
        (which would look for NLTK's own downloaded copy; synsets() does not use it)."""

        def map_wn(self, version="wordnet"):
            return None

    return LocalWordNet


class EntityMatcher:
    def __init__(self, wordnet_dir: str, class_ids: str):
        if not wordnet_dir or not os.path.isdir(wordnet_dir):
            raise ConfigError(f"filtering.wordnet_dir: {wordnet_dir or '(not set)'} is not a folder of WordNet's "
                              f"database files (nltk_data/corpora/wordnet: data.noun, index.noun, ...)")
        if not os.path.exists(os.path.join(wordnet_dir, "index.noun")):
            raise ConfigError(f"filtering.wordnet_dir: {wordnet_dir} holds no index.noun; it is not WordNet's "
                              f"database folder")
        if not class_ids or not os.path.isfile(class_ids):
            raise ConfigError(f"filtering.imagenet21k_ids: {class_ids or '(not set)'} is not a file of WordNet ids "
                              f"(one per line, e.g. n01440764)")
        import nltk

        # NLTK reads only under its data roots: the folder the config names is one
        if wordnet_dir not in nltk.data.path:
            nltk.data.path.append(wordnet_dir)
        self.wordnet_dir, self.class_ids = wordnet_dir, class_ids
        with warnings.catch_warnings():  # "multilingual functions are not available": none are used
            warnings.simplefilter("ignore", UserWarning)
            self.wordnet = _wordnet_reader()(wordnet_dir, None)
        self.entities = set()
        with open(class_ids) as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                if not (line[0].isalpha() and line[1:].isdigit()):
                    raise ConfigError(f"{class_ids}: line {n} {line!r} is not a WordNet id like n01440764")
                self.entities.add(int(line[1:]))
        self._first_offset = functools.lru_cache(maxsize=None)(self._lookup)

    def _lookup(self, word: str) -> int:
        synsets = self.wordnet.synsets(word)
        return synsets[0].offset() if synsets else -1

    def describe(self) -> dict:
        return {"wordnet": self.wordnet_dir, "wordnet_version": self.wordnet.get_version(),
                "classes": self.class_ids, "class_count": len(self.entities)}

    def any_entity(self, captions: pa.Array) -> np.ndarray:
        words = language.split_words(captions)
        flat = pc.list_flatten(words)
        if len(flat) == 0:
            return np.zeros(len(captions), bool)
        encoded = pc.dictionary_encode(flat).combine_chunks() if isinstance(flat, pa.ChunkedArray) \
            else pc.dictionary_encode(flat)
        distinct = encoded.dictionary.to_pylist()
        hit = np.fromiter((self._first_offset(w) in self.entities for w in distinct), bool, len(distinct))
        word_hit = hit[encoded.indices.to_numpy(zero_copy_only=False)]
        counts = pc.list_value_length(words).to_numpy(zero_copy_only=False)
        row = np.repeat(np.arange(len(captions)), counts)
        return np.bincount(row[word_hit], minlength=len(captions)) > 0
