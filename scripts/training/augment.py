"""Photometric and geometric augmentation on raw RGB uint8 camera pixels.

Applied *before* the shared preprocessing (``edge_app.imaging.preprocess``), so the
network learns on exactly what the runtime will hand it after the background
normalisation, across stains, lamps, sensors and focus it has not seen:

- stain: perturbation in haematoxylin-eosin-DAB optical-density space
  (Ruifrok & Johnston colour deconvolution), not only HSV jitter;
- camera: white-balance cast, exposure, gamma, contrast, vignetting;
- optics: defocus blur, lost resolution (down/up-sampling);
- sensor: Gaussian noise N = I + G*alpha with alpha up to 0.4 (covers the
  alpha <= 0.35 robustness protocol), JPEG compression;
- camera style from other crops: the amplitude spectrum of a crop from
  another camera mixed into this one's (``amplitude_mix``), which carries
  that camera's sharpness, contrast and colour without its content.
"""

from __future__ import annotations

import cv2
import numpy as np

# Ruifrok & Johnston stain vectors (rows: haematoxylin, eosin, DAB), as in skimage.
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], np.float32)
_RGB_FROM_HED = _RGB_FROM_HED / np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED).astype(np.float32)


def hed_jitter(img: np.ndarray, rng: np.random.Generator, sigma: float = 0.25, bias: float = 0.05) -> np.ndarray:
    od = -np.log((img.astype(np.float32) + 1.0) / 256.0)
    hed = od.reshape(-1, 3) @ _HED_FROM_RGB
    hed = hed * rng.uniform(1 - sigma, 1 + sigma, 3).astype(np.float32) + rng.uniform(-bias, bias, 3).astype(np.float32)
    od = np.clip(hed @ _RGB_FROM_HED, 0, None)
    out = 256.0 * np.exp(-od) - 1.0
    return np.clip(out, 0, 255).reshape(img.shape).astype(np.uint8)


def camera(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = img.astype(np.float32) / 255.0
    x = x * rng.uniform(0.75, 1.25, 3).astype(np.float32)  # white balance / lamp colour
    x = x * rng.uniform(0.6, 1.25)  # exposure
    mean = x.mean()
    x = (x - mean) * rng.uniform(0.7, 1.3) + mean  # contrast
    x = np.clip(x, 0, 1) ** rng.uniform(0.7, 1.4)  # gamma
    if rng.random() < 0.4:  # vignetting: radial fall-off from a random centre
        h, w = img.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        cy, cx = h * rng.uniform(0.3, 0.7), w * rng.uniform(0.3, 0.7)
        r2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / (max(h, w) ** 2)
        x = x * (1 - rng.uniform(0.2, 0.8) * r2)[..., None]
    return np.clip(x * 255.0, 0, 255).astype(np.uint8)


def optics(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.3:
        f = rng.uniform(0.35, 0.8)
        h, w = img.shape[:2]
        small = cv2.resize(img, (max(8, int(w * f)), max(8, int(h * f))), interpolation=cv2.INTER_AREA)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 2.0))
    return img


def sensor(img: np.ndarray, rng: np.random.Generator, noise_p: float = 0.5, max_alpha: float = 0.4,
           noise_grid=None) -> np.ndarray:
    """Sensor noise and JPEG. ``noise_grid`` = (shape, warp): the noise is drawn on
    a camera pixel grid of that shape and ``warp`` maps it onto this view (the
    view's zoom enlarges its grain); None draws it on the view's own pixels."""
    if rng.random() < noise_p:
        alpha = rng.uniform(0.02, max_alpha)
        shape, warp = noise_grid if noise_grid is not None else (img.shape, None)
        noise = rng.standard_normal(shape).astype(np.float32) * (alpha * 255.0)
        x = img.astype(np.float32) + (noise if warp is None else warp(noise))
        img = np.clip(x, 0, 255).astype(np.uint8)
    if rng.random() < 0.4:
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(30, 95))])
        if ok:
            img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    return img


def photometric(img: np.ndarray, rng: np.random.Generator, strength: float = 1.0, noise_grid=None) -> np.ndarray:
    if strength <= 0:
        return img
    img = hed_jitter(img, rng, sigma=0.25 * strength, bias=0.05 * strength)
    img = camera(img, rng)
    img = optics(img, rng)
    return sensor(img, rng, noise_grid=noise_grid)


def amplitude_mix(img: np.ndarray, style: np.ndarray, rng: np.random.Generator, max_mix: float = 1.0) -> np.ndarray:
    """Amplitude-spectrum mix (FACT, Xu et al., CVPR 2021; after FDA, Yang & Soatto 2020).

    Per channel, the Fourier amplitude of ``img`` is blended with that of
    ``style`` (a crop from another camera, weight ``lam`` ~ U(0, max_mix)) and
    recombined with ``img``'s own phase. The phase holds where things are (the
    cell's outline, nucleus and granules), the amplitude how sharp, contrasted
    and coloured the camera renders them: a defocused, pale camera's spectrum
    falls off early, and the mix shows the network the same cell that way.
    Unlike blur or contrast jitter it needs no model of the camera, only its
    crops, and those need no labels."""
    h, w = img.shape[:2]
    if style.shape[:2] != (h, w):
        style = cv2.resize(style, (w, h), interpolation=cv2.INTER_AREA)
    # Real FFTs, and the phase kept by rescaling fx instead of exp(i*angle): a
    # third of the cost (about 1 ms per 128x128 crop here), same result.
    fx = np.fft.rfft2(img.astype(np.float32), axes=(0, 1))
    fs = np.fft.rfft2(style.astype(np.float32), axes=(0, 1))
    lam = rng.uniform(0.0, max_mix)
    ax = np.abs(fx)
    amp = (1.0 - lam) * ax + lam * np.abs(fs)
    out = np.fft.irfft2(fx * (amp / np.maximum(ax, 1e-6)), s=(h, w), axes=(0, 1))
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


# Zoom range and shift (fraction of the side) of a training crop: about how far
# a detector's box strays from the annotated one (scripts/research/README.md).
CROP_SCALE = (0.85, 1.2)
CROP_SHIFT = 0.06


def view_geometry(shape, rng: np.random.Generator, scale=CROP_SCALE, shift: float = CROP_SHIFT,
                  frame: tuple[float, float, float] | None = None) -> tuple[np.ndarray, bool]:
    """The affine matrix and mirror of one training view of a photo of ``shape``:
    rotation by any angle (cells have no 'up'), zoom, small shifts, flips.

    ``frame`` = (cx, cy, side): the square the kiosk would cut around this
    cell (``kiosk_square``). Given, the crop is centred on it and zoomed so it
    fills the output, then jittered as usual: a single-cell dataset's photo is
    framed as the kiosk frames a detected cell.
    """
    h, w = shape[:2]
    cx, cy, zoom = w / 2, h / 2, 1.0
    if frame is not None:
        cx, cy, zoom = frame[0], frame[1], w / max(frame[2], 1.0)
    m = cv2.getRotationMatrix2D((cx, cy), rng.uniform(0, 360), rng.uniform(*scale) * zoom)
    m[:, 2] += (w / 2 - cx, h / 2 - cy)  # move the cell's centre to the crop's centre
    m[:, 2] += rng.uniform(-shift, shift, 2) * (w, h)
    return m, bool(rng.random() < 0.5)


def warp_view(img: np.ndarray, m: np.ndarray, flip: bool) -> np.ndarray:
    """Apply a ``view_geometry`` to an image (uint8) or a noise field (float32)."""
    h, w = img.shape[:2]
    out = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    return out[:, ::-1].copy() if flip else out


def crop_geometry(img: np.ndarray, rng: np.random.Generator, scale=CROP_SCALE, shift: float = CROP_SHIFT,
                  frame: tuple[float, float, float] | None = None) -> np.ndarray:
    """One random ``view_geometry`` applied to ``img``."""
    return warp_view(img, *view_geometry(img.shape, rng, scale, shift, frame))


def training_view(img: np.ndarray, rng: np.random.Generator, strength: float = 1.0, scale=CROP_SCALE,
                  shift: float = CROP_SHIFT, frame: tuple[float, float, float] | None = None,
                  photometric_first: bool = False, noise_at_source: bool = False,
                  style: np.ndarray | None = None) -> np.ndarray:
    """One training view of a labelled crop: ``crop_geometry`` and ``photometric``.

    By default the photometric effects come after the zoom (how 1.5.0 was
    trained). ``photometric_first`` applies them to the photo before the zoom,
    the order of the field: the camera's optics and sensor form the image,
    then the kiosk cuts the cell's square out of it and resizes it, enlarging
    the noise grain and the blur with the cell. ``noise_at_source`` moves only
    the sensor noise there: it is drawn on the photo's pixels and warped with
    the view, so its grain is the camera's, while stain, lamp, blur and JPEG
    stay where 1.5.0 had them. It draws the same random numbers as the default,
    so a view without noise is 1.5.0's view. With ``photometric_first`` it has
    nothing to add (all the noise is already drawn before the zoom).

    ``style``: another camera's crop whose amplitude spectrum is mixed into
    the view (``amplitude_mix``) after the geometry and before the
    photometric effects; None draws nothing, so runs without it replay.
    """
    if photometric_first:
        img = img if style is None else amplitude_mix(img, style, rng)
        return crop_geometry(photometric(img, rng, strength), rng, scale, shift, frame)
    m, flip = view_geometry(img.shape, rng, scale, shift, frame)
    grid = (img.shape, lambda noise: warp_view(noise, m, flip)) if noise_at_source else None
    view = warp_view(img, m, flip)
    if style is not None:
        view = amplitude_mix(view, style, rng)
    return photometric(view, rng, strength, grid)


def add_gaussian_noise(img: np.ndarray, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """The evaluation protocol N = I + G*alpha (I in [0, 1], G ~ N(0, 1)), clipped."""
    x = img.astype(np.float32) / 255.0 + rng.standard_normal(img.shape).astype(np.float32) * alpha
    return (np.clip(x, 0, 1) * 255.0 + 0.5).astype(np.uint8)
