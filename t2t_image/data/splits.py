"""Split specifications for the local sources (``npz``, ``image_folder``, ``cifar10_archive``).

The grammar follows the TFDS split API so that the same strings work with every
source (the ``tfds`` source passes them to TFDS unchanged):

* ``"train"`` - the whole split;
* ``"train[:90%]"`` / ``"train[90%:]"`` - a percentage slice, boundaries rounded to
  the closest example exactly like TFDS (``rounding="closest"``:
  ``int(round(pct * n / 100))``), so the two halves above are disjoint and cover
  the split;
* ``"train[100:200]"``, ``"train[-500:]"`` - an index slice (Python semantics:
  negative boundaries count from the end, out-of-range boundaries are clipped);
* ``"train[:10%]+test"`` - a concatenation of such parts, in order.

A split without a step is the only form; ``"train[::2]"`` is rejected.
"""

from __future__ import annotations

import dataclasses
import re

_PART_RE = re.compile(
    r"^(?P<name>[A-Za-z_][A-Za-z0-9_\-]*)"
    r"(?:\[(?P<start>-?\d+%?)?:(?P<end>-?\d+%?)?\])?$"
)


@dataclasses.dataclass(frozen=True)
class SplitPart:
    """One ``name[start:end]`` part of a split specification.

    Attributes:
      name: the base split name, e.g. ``"train"``.
      start: the start boundary as written (``"10%"``, ``"-500"``) or None.
      end: the end boundary as written, or None.
    """

    name: str
    start: str | None = None
    end: str | None = None

    def indices(self, num_examples: int) -> range:
        """Returns the example indices this part selects from a split of ``num_examples``.

        Args:
          num_examples: the number of examples in the base split.

        Returns:
          A ``range`` of indices (possibly empty), TFDS "closest" rounding for percents.
        """
        start = _boundary(self.start, num_examples, default=0)
        end = _boundary(self.end, num_examples, default=num_examples)
        return range(start, max(start, end))


def _boundary(text: str | None, n: int, default: int) -> int:
    if text is None:
        return default
    if text.endswith("%"):
        pct = int(text[:-1])
        if not -100 <= pct <= 100:
            raise ValueError(f"split: percent boundary must be in [-100%, 100%], got {text!r}")
        # Same rounding as TFDS's default ReadInstruction(rounding="closest").
        value = int(round(pct * n / 100.0))
    else:
        value = int(text)
    if value < 0:
        value += n
    return min(max(value, 0), n)


def parse_split(split: str) -> list[SplitPart]:
    """Parses a TFDS-style split specification into its parts.

    Args:
      split: e.g. ``"train"``, ``"train[:90%]"``, ``"train[1000:]+test"``.

    Returns:
      The list of ``SplitPart`` in order.

    Raises:
      ValueError: naming ``split`` and the value when it does not follow the grammar.
    """
    if not isinstance(split, str) or not split.strip():
        raise ValueError(f"split must be a non-empty string such as 'train' or 'train[:90%]', got {split!r}")
    parts = []
    for raw in split.replace(" ", "").split("+"):
        match = _PART_RE.match(raw)
        if not match:
            raise ValueError(
                f"split={split!r} is not a valid split specification; expected NAME, "
                "NAME[start:end] with integer or percent boundaries (e.g. 'train[:90%]', "
                "'train[-1000:]'), or parts joined with '+'"
            )
        parts.append(SplitPart(match.group("name"), match.group("start"), match.group("end")))
    return parts
