"""Learned obfuscation of a split model's activation: transform, tuning pass, artifact, NSR.

``load_obfuscator(alpha, noise=None, noise_dir=None, model=...)`` is the entry
point for everything that runs noisy inference (detect, evaluate, Triton client); ``key=``
(bytes or a key file) selects keyed noise. ``check_alpha`` is the one check of an ALPHA value,
``noise_path`` the one place a noise file's path is built.
"""

from veil.obfuscate.alpha import check_alpha
from veil.obfuscate.artifact import (
    NoiseFileError,
    NoiseFileWarning,
    NoiseHashError,
    find_noise_file,
    load_noise_file,
    load_obfuscator,
    noise_dir,
    noise_filename,
    noise_path,
    read_metadata,
    save_obfuscator,
)
from veil.obfuscate.keystream import NoiseKey, NoiseKeyError, new_key_file, read_key_file
from veil.obfuscate.noise import FAMILIES, Obfuscator, isotropic_like
from veil.obfuscate.nsr import detect_with_nsr, nsr_report, nsr_sums

__all__ = [
    "FAMILIES",
    "NoiseFileError",
    "NoiseFileWarning",
    "NoiseHashError",
    "NoiseKey",
    "NoiseKeyError",
    "Obfuscator",
    "check_alpha",
    "detect_with_nsr",
    "find_noise_file",
    "isotropic_like",
    "load_noise_file",
    "load_obfuscator",
    "new_key_file",
    "noise_dir",
    "noise_filename",
    "noise_path",
    "nsr_report",
    "nsr_sums",
    "read_key_file",
    "read_metadata",
    "save_obfuscator",
]
