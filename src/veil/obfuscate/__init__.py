"""Learned obfuscation of a split model's activation: transform, tuning pass, artifact, NSR.

``load_obfuscator(alpha, noise=None, noise_dir=None, weights_sha256=...)`` is the entry
point for everything that runs noisy inference (detect, evaluate, Triton client); ``key=``
(bytes or a key file) selects keyed noise.
"""

from veil.obfuscate.artifact import (NoiseFileError, NoiseFileWarning, load_noise_file, load_obfuscator, noise_dir,
                                     noise_filename, read_metadata, save_obfuscator)
from veil.obfuscate.keystream import NoiseKey, NoiseKeyError, new_key_file, read_key_file
from veil.obfuscate.noise import FAMILIES, Obfuscator, isotropic_like
from veil.obfuscate.nsr import nsr_report, nsr_sums

__all__ = ["FAMILIES", "NoiseFileError", "NoiseFileWarning", "NoiseKey", "NoiseKeyError", "Obfuscator", "isotropic_like",
           "load_noise_file", "load_obfuscator", "new_key_file", "noise_dir", "noise_filename", "nsr_report",
           "nsr_sums", "read_key_file", "read_metadata", "save_obfuscator"]
