"""Regenerate the example images: scikit-image's bundled photos -> 32x32 HWC uint8 .npy.

    python examples/make_examples.py

Each photo is center-cropped to a square and resized with anti-aliasing (scikit-image), then
rounded onto the 0..255 grid.  The CIFAR-10 class of each picture is listed in README.md.
"""
from pathlib import Path

import numpy as np
from skimage import data
from skimage.transform import resize

HERE = Path(__file__).resolve().parent
PHOTOS = {  # file stem: (loader, CIFAR-10 class id, class name)
    "cat_chelsea": (data.chelsea, 3, "cat"),
    "coffee": (data.coffee, None, "none (a coffee cup; not a CIFAR-10 class)"),
    "astronaut": (data.astronaut, None, "none (a person; not a CIFAR-10 class)"),
    "rocket": (data.rocket, None, "none (a rocket; closest CIFAR-10 class: airplane)"),
}


def to_32(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = img[top:top + s, left:left + s, :3]
    small = resize(crop, (32, 32), anti_aliasing=True)  # float in [0, 1]
    return np.clip(np.rint(small * 255.0), 0, 255).astype(np.uint8)


def main() -> None:
    for stem, (load, _cls, _name) in PHOTOS.items():
        arr = to_32(load())
        np.save(HERE / f"{stem}.npy", arr, allow_pickle=False)
        print(f"{stem}.npy {arr.shape} {arr.dtype}")
    # the same cat as float32 CHW in [0, 1]: the other accepted layout (maps back to the same grid)
    cat = to_32(data.chelsea())
    np.save(HERE / "cat_chelsea_chw_float.npy", (cat.transpose(2, 0, 1) / 255.0).astype(np.float32),
            allow_pickle=False)
    print("cat_chelsea_chw_float.npy (3, 32, 32) float32")


if __name__ == "__main__":
    main()
