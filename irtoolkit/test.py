"""Test from an options file: ``irtk-test -opt options/test/x.yml``, or ``python irtoolkit/test.py ...``
(``--describe NAME`` prints what a registered model or arch accepts). A recipe without ``network_g`` tests the
network of ``path.pretrain_network_g`` recognised from the file's contents (irtoolkit's own network files, or a key
layout irtoolkit or spandrel knows: :mod:`irtoolkit.inference.recognise`); the detected arch is logged."""


def main(argv=None):
    import irtoolkit  # noqa: F401  (applies compat patches and registers everything)
    from irtoolkit.engine.runner import test, user_errors
    user_errors(test, argv)


if __name__ == '__main__':
    main()
