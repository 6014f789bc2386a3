"""What a reduction did on the last call: visual tokens before/after per sample and per visual input."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class ItemStats:
    """One image or video: tokens the model would have seen and tokens it saw.

    ``before``/``after`` count every placeholder token; ``structural_before``/``structural_after`` how
    many of them are structural (LLaVA-NeXT/OneVision newlines), which budgets do not count. ``stage``:
    where the tokens were reduced (``"vision"`` for merging inside the encoder, else ``"pre_llm"``).
    ``vision_per_layer``: tokens each vision-encoder layer processed, class token included (vision stage
    only; an AnyRes image's base and crops run as one padded batch, so this is the longest of them, which
    every one of them was padded to), and ``vision_projected`` the feature tokens per encoder sequence the
    projector saw (padded likewise). ``provenance``: the output token each content token went into
    (-1 = dropped), the reduction's own record of which original patches every LLM token stands for. ``parts``: (content
    tokens, kept) of each part the method's allocation selected in (base image, crops, segments,
    frames); empty when it chose over the whole item. ``last_layer``: after an in-LLM stage, the item's
    LLM tokens (indices into its kept tokens, the values ``provenance`` takes) that reached the last
    decoder layer; ``None`` without one.
    """

    modality: str
    before: int
    after: int
    structural_before: int = 0
    structural_after: int = 0
    stage: str = "pre_llm"
    vision_per_layer: tuple[int, ...] = ()
    vision_projected: int = 0
    provenance: tuple[int, ...] = field(default=(), repr=False)
    parts: tuple[tuple[int, int], ...] = ()  # (tokens, kept) per part an allocation split the item into
    last_layer: tuple[int, ...] | None = field(default=None, repr=False)

    @property
    def content_before(self) -> int:
        return self.before - self.structural_before

    @property
    def content_after(self) -> int:
        """Tokens the budget counts: what the method kept."""
        return self.after - self.structural_after


@dataclass(frozen=True)
class SampleStats:
    """One batch row."""

    items: tuple[ItemStats, ...]
    prompt_before: int
    prompt_after: int
    visual_per_layer: tuple[int, ...] = ()  # visual tokens each decoder layer saw (in-LLM stages only)

    @property
    def visual_before(self) -> int:
        return sum(item.before for item in self.items)

    @property
    def visual_after(self) -> int:
        return sum(item.after for item in self.items)


@dataclass(frozen=True)
class CallStats:
    """The last reduced ``forward``/``generate`` call of a wrapped model."""

    method: str
    positions: str
    samples: tuple[SampleStats, ...] = field(default_factory=tuple)

    @property
    def visual_before(self) -> list[int]:
        return [s.visual_before for s in self.samples]

    @property
    def visual_after(self) -> list[int]:
        return [s.visual_after for s in self.samples]

    def as_dict(self) -> dict:
        out = asdict(self)
        for sample, raw in zip(self.samples, out["samples"]):
            raw["visual_before"], raw["visual_after"] = sample.visual_before, sample.visual_after
        return out

    def __str__(self) -> str:
        rows = [f"{self.method} (positions={self.positions})"]
        for i, s in enumerate(self.samples):
            per_item = ", ".join(f"{it.modality} {it.before}->{it.after}" for it in s.items) or "no visual input"
            encoder = [list(it.vision_per_layer) for it in s.items if it.vision_per_layer]
            rows.append(
                f"  sample {i}: visual {s.visual_before}->{s.visual_after} ({per_item}); "
                f"prompt {s.prompt_before}->{s.prompt_after} tokens"
            )
            if encoder:
                rows.append(f"    tokens per vision-encoder layer (class token included): {encoder}")
            if s.visual_per_layer:
                rows.append(f"    visual tokens per decoder layer: {list(s.visual_per_layer)}")
        return "\n".join(rows)
