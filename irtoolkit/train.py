"""Train from an options file: ``irtk-train -opt options/train/x.yml [--launcher pytorch]``, or
``python irtoolkit/train.py ...`` (the package is installed, ``pip install -e .``: no path set-up is needed)."""
import irtoolkit  # noqa: F401  (applies compat patches and registers everything)
from irtoolkit.engine.runner import train, user_errors


def main(argv=None):
    user_errors(train, argv)


if __name__ == '__main__':
    main()
