"""Privacy audit: reconstruction attackers (decoders, white-box inversion, averaging) and what they recover.

``load_decoder``/``reconstruct`` give the picture of what leaves the trust zone (``veil infer``,
the notebook); :func:`veil.privacy.audit.audit` measures it (SSIM/PSNR, identity rank-1, TAR).
"""

from veil.privacy.decoders import Decoder, load_decoder, reconstruct

__all__ = ["Decoder", "load_decoder", "reconstruct"]
