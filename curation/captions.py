"""Captions of a clip behind one interface.

The paper (SVD, Sec. 3.1) gives each clip three captions: CoCa on the middle frame, a video captioner (V-BLIP) on
the clip, and an LLM summary of those two; training samples them 0.5 / 0.25 / 0.25. Here:

* ``Captioner``: anything that turns one clip's frames (first, middle, last) into a caption. ``CocaCaptioner``
  is open_clip's CoCa; a video captioner implements the same protocol and is added in ``build_captioners``.
* ``Summariser``: an LLM that turns a clip's captions into one; it runs after the captioners (``caption_clip``).

Only CoCa is implemented; nothing stands in for the other two models, so their captions are simply absent.
"""

from __future__ import annotations

import re
from typing import Mapping, Protocol, runtime_checkable

import numpy as np
import torch

from curation.clip_models import load_model
from svdpipe.config_schema import CaptionConfig


@runtime_checkable
class Captioner(Protocol):
    name: str  # model identity for the clips table

    def caption(self, frames: list[np.ndarray]) -> str:
        """Caption ONE clip from its sampled frames (first, middle, last); image captioners use the middle one."""
        ...


@runtime_checkable
class Summariser(Protocol):
    name: str

    def summarise(self, captions: Mapping[str, str]) -> str:
        """One caption from a clip's captions by captioner key (the paper's LLM summary of CoCa and V-BLIP)."""
        ...


def middle_frame(frames: list[np.ndarray]) -> np.ndarray:
    if not frames:
        raise ValueError("a clip needs at least one frame to be captioned")
    return frames[len(frames) // 2]


class CocaCaptioner:
    """open_clip CoCa on the middle frame, decoded by beam search (greedy with ``num_beams=1``).

    Many clips are captioned in one batched search (``captions``), on the GPU in reduced precision when
    ``compute`` says so. The decoder is ours, not ``CoCa.generate``: open_clip 3.3 enables ``generate`` only if it can import
    transformers' ``BeamSearchScorer``, which transformers 5 removed. This one runs CoCa's own forward pass
    (image encoded once, text decoded step by step) with open_clip's conventions: start/end tokens of CLIP's BPE,
    the pad id as a second end token, ``min_tokens`` to ``max_tokens`` caption tokens. It draws no random
    numbers, so a caption is a function of the weights and the frame (for tiny models, of the seed).
    """

    def __init__(self, cfg: CaptionConfig, seed: int = 0, device: str = "cpu", dtype: str = "float32"):
        if cfg.min_tokens > cfg.max_tokens:
            raise ValueError(f"caption min_tokens ({cfg.min_tokens}) exceeds max_tokens ({cfg.max_tokens})")
        self.cfg = cfg
        self._coca = load_model(cfg.model, cfg.pretrained, seed=seed, device=device, dtype=dtype)
        decoder = getattr(self._coca.model, "text_decoder", None)
        if decoder is None:
            raise ValueError(f"{cfg.model!r} is not a CoCa model (no text decoder); captions need one")
        if not decoder.batch_first:
            raise ValueError(f"{cfg.model!r}: only batch-first CoCa decoders are supported")
        self.name = self._coca.name
        tok = self._coca.tokenizer
        self._sot, self._eot, self._pad = tok.sot_token_id, tok.eot_token_id, int(self._coca.model.pad_id)

    def caption(self, frames: list[np.ndarray]) -> str:
        return self.captions([frames])[0]

    def captions(self, clips: list[list[np.ndarray]]) -> list[str]:
        """One caption per clip (its frames as ``caption`` takes them), ``cfg.batch_size`` clips decoded at once."""
        out: list[str] = []
        for i in range(0, len(clips), self.cfg.batch_size):
            image = self._coca.images_to_tensor([middle_frame(f) for f in clips[i : i + self.cfg.batch_size]])
            out += [_clean(self._coca.tokenizer.decode(ids)) for ids in self._decode(image)]
        return out

    @torch.inference_mode()
    def _decode(self, images: torch.Tensor) -> list[list[int]]:
        """Beam search over CoCa's next-token log-probabilities for a batch of images; their captions' token ids.

        Each image keeps ``k`` beam rows (rows ``a*k .. a*k+k-1`` of the images still searching; a row with score
        -inf is empty), so one forward pass and one top-k serve every image, and each image's search is the one it
        would have alone. An image leaves the batch once it has ``k`` finished captions.
        """
        k = self.cfg.num_beams
        embs = self._coca.model(images)["image_embs"]  # no text: the image tokens, computed once
        n, dev = embs.shape[0], images.device
        active = list(range(n))  # images still searching, in row-block order
        seqs = torch.full((n * k, 1), self._sot, dtype=torch.long, device=dev)
        scores = torch.full((n, k), -torch.inf, device=dev)
        scores[:, 0] = 0.0  # one live beam per image to start with
        scores = scores.flatten()
        finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(n)]
        for length in range(self.cfg.max_tokens + 1):  # ``length`` caption tokens so far in every live beam
            image_embs = embs[torch.tensor(active, device=dev)].repeat_interleave(k, dim=0)
            logp = torch.log_softmax(self._next_logits(seqs, image_embs), dim=-1)
            logp[:, self._sot] = -torch.inf
            if length < self.cfg.min_tokens:
                logp[:, [self._eot, self._pad]] = -torch.inf
            elif length == self.cfg.max_tokens:
                # Out of length: every live beam ends here.
                ends = logp[:, [self._eot, self._pad]].clone()
                logp.fill_(-torch.inf)
                logp[:, [self._eot, self._pad]] = ends
            vocab = logp.shape[1]
            total = (scores[:, None] + logp).view(len(active), k * vocab)
            top = torch.topk(total, min(2 * k, total.shape[1]), dim=1)
            rows, tokens, values, still = [], [], [], []
            for a, (image, vals, idxs) in enumerate(zip(active, top.values.tolist(), top.indices.tolist())):
                keep: list[tuple[int, int, float]] = []  # (beam row, next token, score) of the live beams
                for value, index in zip(vals, idxs):
                    beam, token = divmod(index, vocab)
                    if value == -torch.inf:
                        break
                    if token in (self._eot, self._pad):
                        # Length-normalised like HF's beam scorer (length_penalty=1), so short captions are not favoured.
                        finished[image].append((value / (length + 1), seqs[a * k + beam, 1:].tolist()))
                    elif len(keep) < k:
                        keep.append((a * k + beam, token, value))
                if len(finished[image]) >= k or not keep:
                    continue
                keep += [(keep[0][0], keep[0][1], -torch.inf)] * (k - len(keep))  # empty rows pad the block
                still.append(image)
                for row, token, value in keep:
                    rows.append(row), tokens.append(token), values.append(value)
            if not still:
                break
            active = still
            seqs = torch.cat([seqs[rows], torch.tensor(tokens, device=dev)[:, None]], dim=1)
            scores = torch.tensor(values, device=dev)
        return [max(f, key=lambda c: c[0])[1] for f in finished]

    def _next_logits(self, seqs: torch.Tensor, image_embs: torch.Tensor) -> torch.Tensor:
        """CoCa's next-token logits: ``model(image, seqs)["logits"][:, -1]``, projecting only the last position.

        CoCa's forward projects every position onto the 49408-token vocabulary; step-by-step decoding needs the
        last one, and the other projections were most of a tiny model's decoding time. The steps are those of
        open_clip's ``MultimodalTransformer.forward`` (a test checks both agree).
        """
        model = self._coca.model
        dec = model.text_decoder
        text_embs = model.text(seqs)[1]  # unimodal text tower's token embeddings, as CoCa.forward takes them
        n = text_embs.shape[1]
        for resblock, cross_attn in zip(dec.resblocks, dec.cross_attn):
            text_embs = resblock(text_embs, attn_mask=dec.attn_mask[:n, :n])
            text_embs = cross_attn(text_embs, k_x=image_embs, v_x=image_embs)
        return (dec.ln_final(text_embs[:, -1]) @ dec.text_projection).float()


def _clean(text: str) -> str:
    """CLIP's BPE decodes with spaces before punctuation ("a dog ."); tidy that and the ends."""
    text = re.sub(r"\s+([.,!?;:])", r"\1", text)
    return re.sub(r"\s+", " ", text).strip()


def build_captioners(cfg: CaptionConfig, seed: int = 0) -> dict[str, Captioner]:
    """The clip captioners by key. A video captioner (the paper's V-BLIP) is added here under its own key when
    there is one; an LLM ``Summariser`` of their captions runs after them in ``caption_clip``."""
    return {"coca": CocaCaptioner(cfg, seed=seed)}


def caption_clip(
    frames: list[np.ndarray], captioners: Mapping[str, Captioner], summariser: Summariser | None = None
) -> dict[str, str]:
    """All captions of one clip: one per captioner, plus ``summary`` when a summariser is given."""
    captions = {key: captioner.caption(frames) for key, captioner in captioners.items()}
    if summariser is not None:
        captions["summary"] = summariser.summarise(captions)
    return captions
