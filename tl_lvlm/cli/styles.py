"""Style sets for semantics against appearance: ``--styles photo=DIR sketch=DIR ...``.

Each ``DIR`` holds one subfolder per class, named by the class (the DomainNet, PACS and
ImageNet-R layout)::

    photo/dog/001.jpg   photo/cat/002.jpg   sketch/dog/003.png ...

The images of every style and class are one image set: named ``style/class/file``,
labelled with the class folder's name (checked like any label: one token for the model,
every bad one reported at once before the run writes anything), and each folder read as
``--images`` reads one (:func:`~tl_lvlm.cli.image_sources.check_image_source`: the same
formats, warnings and ``--strict``). Files directly in ``DIR`` are warned about.
"""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path

from tl_lvlm.cli.image_sources import ImageFolder, check_image_source


def style_spec(text: str) -> tuple[str, Path]:
    """``"photo=DIR"`` -> ``("photo", Path(DIR))``; an argparse ``type``."""
    style, sep, directory = text.partition("=")
    if not sep or not style or not directory:
        raise argparse.ArgumentTypeError(f"must be STYLE=DIR (e.g. photo=data/photo), got {text!r}")
    return style, Path(directory).expanduser()


def check_styles(styles: list[tuple[str, Path]], *, strict: bool = False) -> ImageFolder:
    """List and decode every style's class folders before any model loads.

    Returns:
        One :class:`ImageFolder` of all styles' images, sorted by style (in the given
        order), class and file, with ``names`` ``style/class/file``, labels the class
        names and ``styles`` each image's style.

    Raises:
        ValueError: a style named twice, a ``DIR`` that is not a directory or has no
            class subfolders, a class folder without readable images (or, with
            ``strict``, with an unreadable one).
    """
    seen = [style for style, _ in styles]
    twice = sorted({s for s in seen if seen.count(s) > 1})
    if twice:
        raise ValueError(f"--styles names {', '.join(twice)} more than once; name each once")
    files, names, labels, of_style = [], [], {}, {}
    for style, directory in styles:
        where = f"--styles {style}={directory}"
        if not directory.is_dir():
            raise ValueError(f"{where}: no such directory")
        entries = sorted(p for p in directory.iterdir() if not p.name.startswith("."))
        classes = [p for p in entries if p.is_dir()]
        if not classes:
            raise ValueError(
                f"{where}: no class subfolders; a style holds one folder per class "
                f"({directory}/dog/..., {directory}/cat/...)"
            )
        loose = [p.name for p in entries if p.is_file()]
        if loose:
            warnings.warn(
                f"{where}: ignored {', '.join(loose[:5])}: files outside the class subfolders",
                stacklevel=2,
            )
        for folder in classes:
            listed = check_image_source(folder, f"{where} class", strict=strict)
            for f in listed.files:
                name = f"{style}/{folder.name}/{f.name}"
                files.append(f)
                names.append(name)
                labels[name] = folder.name
                of_style[name] = style
    return ImageFolder(
        Path(os.path.commonpath([d for _, d in styles])),
        tuple(files),
        labels,
        names=tuple(names),
        styles=of_style,
    )
