"""``python -m mmchar`` (and ``torchrun ... -m mmchar``): the CLI."""

import os
import sys


def _checkout_subpackages() -> None:
    """Run from a source checkout (its root first on sys.path: ``python -m mmchar`` or ``torchrun -m mmchar`` in
    the repository), ``mmchar.kernels``, ``.workloads``, ``.analysis`` and ``.dashboards`` are the top-level folders
    beside the package, as pyproject's package-dir maps them when installed: the root joins the package's path,
    and leaves sys.path, where its ``kernels/`` folder would pass for Hugging Face's ``kernels`` package that
    diffusers and transformers probe for (and fail to import Wan's pipeline). Only here, for ``-m``: an
    ``import mmchar`` elsewhere leaves the interpreter's path alone."""
    import mmchar

    here = os.path.dirname(os.path.abspath(mmchar.__file__))
    root = os.path.dirname(here)
    if not (os.path.isfile(os.path.join(root, "pyproject.toml"))
            and os.path.isfile(os.path.join(root, "workloads", "__init__.py"))
            and not os.path.isdir(os.path.join(here, "workloads"))):
        return
    if root not in mmchar.__path__:
        mmchar.__path__.append(root)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != root]


_checkout_subpackages()

from mmchar.cli import main  # noqa: E402

main()
