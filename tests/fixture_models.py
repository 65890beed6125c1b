"""Small models with the real architectures and file formats, for tests and benchmarks offline.

Each writes the same kind of file the production model comes as, so the
production loading code runs on it unchanged. They are fixtures: the
Detoxify stand-in is trained for seconds on a handful of captions, the others
have random weights (the SCRFD stand-in's are set by hand so that it "detects"
bright squares). None is accurate and nothing here pretends otherwise.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from datacomp_ops.embedded.images import CLASSES
from datacomp_ops.synthetic.crawl import NOISE_CAPTIONS, PHOTO_CAPTIONS, TEMPLATES, UNSAFE_CAPTIONS

DETOXIFY_CLASSES = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate", "sexual_explicit"]


def _captions() -> tuple[list[str], list[str]]:
    safe = [t.format(c=c) for t in TEMPLATES for c in CLASSES] + [n.format(n=7) for n in NOISE_CAPTIONS]
    safe += list(PHOTO_CAPTIONS.values()) + ["un cercle rouge", "ein Quadrat, blau", "un triángulo verde"]
    unsafe = [u.format(c=c) for u in UNSAFE_CAPTIONS for c in CLASSES]
    return safe, unsafe


def detoxify_checkpoint(out_dir: str | Path, steps: int = 150, seed: int = 0) -> tuple[str, str]:
    """A Detoxify-format checkpoint of a 2-layer XLM-RoBERTa, and its local config/tokenizer directory.

    The tokenizer is a sentencepiece model trained on the captions, with
    XLM-R's special-token ids; the classifier is fine-tuned briefly to call the
    synthetic crawl's unsafe captions toxic. The checkpoint names
    ``xlm-roberta-base`` inside, as Detoxify's real multilingual one does.
    Returns (checkpoint path, Hugging Face directory).
    """
    import sentencepiece as spm
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification, XLMRobertaTokenizer

    out = Path(out_dir)
    hf_dir = out / "xlm-roberta-fixture"
    hf_dir.mkdir(parents=True, exist_ok=True)
    safe, unsafe = _captions()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(safe + unsafe), model_prefix=str(out / "spm"), vocab_size=200, model_type="unigram",
        character_coverage=1.0, hard_vocab_limit=False, bos_id=0, pad_id=1, eos_id=2, unk_id=3, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(out / "spm.model"))
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())] + [("<mask>", 0.0)]
    tokenizer = XLMRobertaTokenizer(vocab=vocab)
    tokenizer.save_pretrained(hf_dir)
    config = XLMRobertaConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=64, max_position_embeddings=66, num_labels=len(DETOXIFY_CLASSES))
    config.save_pretrained(hf_dir)

    torch.manual_seed(seed)
    model = XLMRobertaForSequenceClassification(config)
    texts = safe + unsafe
    labels = torch.tensor([[0.0] * len(DETOXIFY_CLASSES)] * len(safe) + [[1.0, 0, 1.0, 0, 1.0, 0, 1.0]] * len(unsafe))
    batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(**batch).logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    checkpoint = {
        "config": {"arch": {"args": {"model_type": "xlm-roberta-base", "model_name": "XLMRobertaForSequenceClassification",
                                     "tokenizer_name": "XLMRobertaTokenizer", "num_classes": len(DETOXIFY_CLASSES)}},
                   "dataset": {"args": {"classes": DETOXIFY_CLASSES}}},
        "state_dict": model.state_dict(),
    }
    path = out / "multilingual_fixture.ckpt"
    torch.save(checkpoint, path)
    return str(path), str(hf_dir)


def nsfw_mlp_state_dict(path: str | Path, seed: int = 0, laion_keys: bool = False) -> str:
    """Random weights of DataComp's NSFW head, in DataComp's key names or LAION's port's."""
    import torch

    from datacomp_ops.pool.nsfw_image import datacomp_nsfw_mlp

    torch.manual_seed(seed)
    model = datacomp_nsfw_mlp()
    with torch.no_grad():
        model.norm.running_mean.normal_(0, 0.05)
        model.norm.running_var.uniform_(0.5, 2.0)
    state = model.state_dict()
    if laion_keys:
        state = {"norm.mean": state["norm.running_mean"], "norm.variance": state["norm.running_var"],
                 **{f"linear_{i}.{p}": state[f"{n}.{p}"] for i, n in enumerate(("dense", "dense1", "dense2", "dense3"), 1)
                    for p in ("weight", "bias")}}
    torch.save(state, path)
    return str(path)


def scrfd_onnx(path: str | Path, stride_scores: dict[int, float] | None = None) -> str:
    """An ONNX model with SCRFD's nine outputs (scores, boxes, keypoints at strides 8, 16, 32; two anchors).

    Hand-set weights: at stride 32 the score is high where a 32x32 cell is
    bright (mean input above 0.5 after SCRFD's normalisation), and every box
    reaches one stride (32 px) from its anchor centre on each side; strides 8
    and 16 never fire. So a white square on black is found where it is.
    """
    import torch
    import torch.nn as nn

    class TinySCRFD(nn.Module):
        def forward(self, x):
            brightness = x.mean(1, keepdim=True)  # SCRFD feeds (pixel - 127.5) / 128
            outs_s, outs_b, outs_k = [], [], []
            for stride in (8, 16, 32):
                cell = nn.functional.avg_pool2d(brightness, stride)  # (1, 1, H/s, W/s)
                if stride == 32:
                    score = torch.sigmoid(40.0 * (cell - 0.5))
                else:
                    score = torch.zeros_like(cell)
                score = score.permute(0, 2, 3, 1).reshape(-1, 1).repeat_interleave(2, dim=0)
                outs_s.append(score)
                outs_b.append(torch.ones_like(score).repeat(1, 4))  # (l, t, r, b) in strides
                outs_k.append(torch.zeros_like(score).repeat(1, 10))
            return (*outs_s, *outs_b, *outs_k)

    torch.onnx.export(TinySCRFD(), torch.zeros(1, 3, 640, 640), str(path), input_names=["input.1"],
                      output_names=[f"out{i}" for i in range(9)], dynamic_axes={"input.1": {2: "h", 3: "w"}},
                      opset_version=17, dynamo=False)
    return str(path)


def isc_checkpoint(path: str | Path, backbone: str = "resnet10t", input_size: int = 128, seed: int = 0) -> str:
    """An ISC21-format checkpoint (``arch``, ``args`` Namespace, ``module.``-prefixed state dict)."""
    import timm
    import torch

    torch.manual_seed(seed)
    net = timm.create_model(backbone, features_only=True, pretrained=False)
    fc = torch.nn.Linear(net.feature_info.info[-1]["num_chs"], 256, bias=False)
    bn = torch.nn.BatchNorm1d(256)
    state = {f"module.backbone.{k}": v for k, v in net.state_dict().items()}
    state |= {f"module.fc.{k}": v for k, v in fc.state_dict().items()}
    state |= {f"module.bn.{k}": v for k, v in bn.state_dict().items()}
    torch.save({"arch": backbone, "args": argparse.Namespace(input_size=input_size), "state_dict": state}, path)
    return str(path)


def write_all(out_dir: str | Path) -> dict[str, str]:
    """Every fixture, and the config overrides that select them: the production code paths, offline."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt, hf_dir = detoxify_checkpoint(out / "detoxify")
    return {
        "models.detoxify": ckpt,
        "models.detoxify_hf_dir": hf_dir,
        "models.scrfd": scrfd_onnx(out / "scrfd_fixture.onnx"),
        "models.dedup_descriptor": isc_checkpoint(out / "isc_fixture.pth.tar"),
    }
