"""
flite, the speech synthesizer of the built-in speech (`sudo apt-get install flite`): its voices and their variants
(`Speaker`, `SPEAKERS`), running it with its phone durations (`-psdur`), and its phone set (`PHONE_CLASSES`; `PAUSE`
is its silence).
"""

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# Phone classes of the CMU/ARPAbet set (flite's phones), in heatmap order; other phones come last
PHONE_CLASSES = {
    "vowel": ("iy", "ih", "ey", "eh", "ae", "aa", "ao", "ah", "ax", "uh", "uw", "ow", "er", "axr"),
    "diphthong": ("ay", "aw", "oy"),
    "stop": ("p", "b", "t", "d", "k", "g"),
    "affricate": ("ch", "jh"),
    "fricative": ("f", "v", "th", "dh", "s", "z", "sh", "zh", "hh"),
    "nasal": ("m", "n", "ng"),
    "liquid": ("l", "r"),
    "glide": ("w", "y"),
    "silence": ("pau", "sil", "sp"),
}
PAUSE = "pau"  # flite's silence phone: a pause between words, never an ABX token, but a valid context


@dataclass(frozen=True)
class Speaker:
    """A flite voice with an optional mean pitch (Hz) and a tempo factor (>1 is slower)."""

    name: str
    voice: str
    f0_mean: float | None = None
    duration_stretch: float = 1.0

    def flite_options(self) -> list[str]:
        options = ["-voice", self.voice]
        if self.f0_mean is not None:
            options += ["--setf", f"int_f0_target_mean={self.f0_mean:g}"]
        if self.duration_stretch != 1.0:
            options += ["--setf", f"duration_stretch={self.duration_stretch:g}"]
        return options


# The first N are used. The rms voice ignores pitch settings, so its variants differ in tempo only. With the
# default 8 speakers and 2 dev speakers, dev holds rms_slow and kal_high: two different voices.
SPEAKERS = (
    Speaker("awb", "awb"),
    Speaker("slt", "slt"),
    Speaker("rms", "rms"),
    Speaker("kal", "kal16"),
    Speaker("awb_low", "awb", 100, 1.1),
    Speaker("slt_high", "slt", 220, 0.9),
    Speaker("rms_slow", "rms", None, 1.2),
    Speaker("kal_high", "kal16", 125, 0.95),
    Speaker("awb_high", "awb", 165, 0.9),
    Speaker("slt_low", "slt", 140, 1.15),
    Speaker("rms_fast", "rms", None, 0.85),
    Speaker("kal_low", "kal16", 70, 1.1),
)


def find_flite() -> str:
    """Path of the flite executable, or a ValueError that says how to install it."""
    flite = shutil.which("flite")
    if flite is None:
        raise ValueError("flite is not installed: install it with `sudo apt-get install flite` (Debian/Ubuntu).")
    return flite


def parse_psdur(output: str) -> list[tuple[str, float]]:
    """Parse flite's `-psdur` output, `phone:end_time` pairs separated by spaces, into (phone, end seconds)."""
    segments = []
    for field in output.split():
        phone, _, end = field.partition(":")
        try:
            segments.append((phone, float(end)))
        except ValueError:
            raise ValueError(f"Unexpected flite -psdur field {field!r}") from None
    if not segments:
        raise ValueError("flite printed no phone segments")
    return segments


def phones_of(flite: str, text: str, voice: Speaker, wav: Path | None = None) -> list[str]:
    """The phones flite speaks for `text` (pauses left out), writing the audio to `wav` if given."""
    output = str(wav) if wav is not None else "none"
    result = subprocess.run(
        [flite, *voice.flite_options(), "-psdur", "-t", text, "-o", output], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"flite failed on {text!r}: {result.stderr.strip()}")
    return [phone for phone, _ in parse_psdur(result.stdout) if phone != PAUSE]
