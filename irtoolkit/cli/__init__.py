"""irtoolkit's commands: one module per console script (pyproject.toml ``[project.scripts]``).

Every module here has ``main(argv=None)``, which parses ``argv`` (default: the command line) and returns an exit
status (``None`` for 0). ``pip install -e .`` puts the commands on the PATH; ``python tools/<name>.py`` runs the
same ``main`` (``tools/`` holds only thin wrappers, plus the shell scripts dist_train.sh and slurm_train.sh).

    irtk-train                irtoolkit.train                    train from an options file
    irtk-test                 irtoolkit.test                     test from an options file
    irtk-infer                irtoolkit.cli.infer                restore images with any network and checkpoint, tiled
                                                                 (--weights alone: the network recognised from the file)
    irtk-evaluate             irtoolkit.cli.evaluate             score folders of restored images, methods side by side
    irtk-create-lmdb          irtoolkit.cli.create_lmdb          image folders -> LMDB (BasicSR layout), verify LMDBs
    irtk-convert-options      irtoolkit.cli.convert_options      BasicSR / upstream IRConStyle recipe -> irtoolkit's
    irtk-weights              irtoolkit.cli.weights              which weight files metrics and losses need, and where;
                                                                 convert .pth <-> .safetensors; inspect a checkpoint
    irtk-demo                 irtoolkit.cli.demo                 `make demo`: data, training, evaluation, report
    irtk-make-demo-data       irtoolkit.cli.make_demo_data       build the demo dataset (irtoolkit.data.demo)
    irtk-make-tiny-data       irtoolkit.cli.make_tiny_data       build the tiny test set (irtoolkit.data.tiny)
    irtk-contrastive-report   irtoolkit.cli.contrastive_report   loss curves of a log; PSNR of output vs input
    irtk-snapshot-recipes     irtoolkit.cli.snapshot_recipes     snapshot / check what every recipe resolves to
    irtk-validate-checkpoints irtoolkit.cli.validate_checkpoints re-validate every checkpoint of a run: CSV / MD / PNG
    irtk-export               irtoolkit.cli.export               ONNX / TorchScript export, parity with onnxruntime
    irtk-complexity           irtoolkit.cli.complexity           parameters, FLOPs, CPU latency, peak memory per size

The commands hold argument parsing and printing; the work is done by the library (``irtoolkit.data``,
``irtoolkit.inference``, ``irtoolkit.metrics``, ``irtoolkit.config``, ``irtoolkit.utils``). Importing any of them
imports the package, which applies the basicsr patches and registers every arch, loss, model, dataset and metric.
"""
import os
import os.path as osp


def checkout_root():
    """The folder whose ``options/`` the commands use by default (``--repo`` overrides it): the checkout holding
    the package when it has an ``options/`` folder (an editable install, ``pip install -e .``), else the current
    directory."""
    import irtoolkit
    repo = osp.dirname(osp.dirname(osp.abspath(irtoolkit.__file__)))
    return repo if osp.isdir(osp.join(repo, 'options')) else os.getcwd()
