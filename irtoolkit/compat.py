"""Every workaround irtoolkit needs for basicsr 1.4.2 on torch 2.14 / torchvision 0.29 / lmdb 3.

``import irtoolkit`` calls :func:`apply` before anything imports basicsr. Each patch says what breaks
and when it can go. The patches make broken paths work; the one change to working behaviour is that basicsr
models write their checkpoints atomically (and a failed write stops the run instead of being ignored). Patches for
basicsr's own train pipeline (CUDA resume, dist init) are not here: irtoolkit has its own runner
(``irtoolkit/engine``, which also runs basicsr-interface models) and never calls ``train_pipeline``.
"""
import os
import sys

_APPLIED = False


def _alias_functional_tensor():
    # basicsr/data/degradations.py imports torchvision.transforms.functional_tensor, removed in
    # torchvision 0.17 (kept as the private _functional_tensor). Go when basicsr > 1.4.2 is released.
    try:
        import torchvision.transforms.functional_tensor  # noqa: F401
    except ImportError:
        import torchvision.transforms._functional_tensor as _ft
        sys.modules.setdefault('torchvision.transforms.functional_tensor', _ft)


def _patch_lmdb_backend():
    # basicsr's LmdbBackend calls lmdb.open per FileClient; with lmdb >= 2 the second one fails. Route it through
    # irtoolkit.data.lmdb_env.open_lmdb, and make a missing key a clear error instead of imfrombytes(None) crashing.
    # Can go when basicsr caches environments or lmdb drops the single-open rule.
    from basicsr.utils import file_client

    from irtoolkit.data.lmdb_env import open_lmdb

    def __init__(self, db_paths, client_keys='default', readonly=True, lock=False, readahead=False, **kwargs):
        if isinstance(client_keys, str):
            client_keys = [client_keys]
        if isinstance(db_paths, (str, os.PathLike)):
            db_paths = [db_paths]
        if len(client_keys) != len(db_paths):
            raise ValueError(f'LMDB backend: {len(db_paths)} db_paths but {len(client_keys)} client_keys')
        self.db_paths = [os.fspath(p) for p in db_paths]
        self.client_keys = list(client_keys)
        self._env_kwargs = dict(readonly=readonly, lock=lock, readahead=readahead, **kwargs)

    @property
    def _client(self):
        return {k: open_lmdb(p, **self._env_kwargs) for k, p in zip(self.client_keys, self.db_paths)}

    def get(self, filepath, client_key):
        filepath = str(filepath)
        if client_key not in self.client_keys:
            raise KeyError(f'LMDB backend: unknown client key {client_key!r}; have {self.client_keys}')
        db_path = self.db_paths[self.client_keys.index(client_key)]
        with open_lmdb(db_path, **self._env_kwargs).begin(write=False) as txn:
            value = txn.get(filepath.encode('ascii'))
        if value is None:
            raise KeyError(f'LMDB key {filepath!r} not found in {db_path} ({client_key})')
        return value

    file_client.LmdbBackend.__init__ = __init__
    file_client.LmdbBackend._client = _client
    file_client.LmdbBackend.get = get


def _patch_perceptual_l2():
    # basicsr.losses.basic_loss.PerceptualLoss(criterion='l2') builds torch.nn.L2loss, which does not
    # exist (AttributeError). Give it the MSE it means. Can go when basicsr fixes the typo (fixed on master).
    import torch
    if not hasattr(torch.nn, 'L2loss'):
        torch.nn.L2loss = torch.nn.MSELoss


def _patch_basicsr_model_io():
    # basicsr's BaseModel (1.4.2) wraps networks in DDP with device_ids=[torch.cuda.current_device()], which fails on
    # CPU (gloo): wrap with device_ids=None there. Its save_network / save_training_state call torch.save on the
    # final name with three retries and then *ignore* the failure ("Just ignore it"): a crash mid-write leaves a
    # truncated checkpoint and a full disk loses it silently. Write through irtoolkit's atomic_save instead, and let
    # a failure stop the run. Both can go if basicsr gains CPU DDP and atomic writes.
    import torch
    from basicsr.models import base_model
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    from irtoolkit.utils.checkpoint import atomic_save

    def model_to_device(self, net):
        net = net.to(self.device)
        if self.opt['dist']:
            ids = [torch.cuda.current_device()] if self.device.type == 'cuda' else None
            return DistributedDataParallel(net, device_ids=ids,
                                           find_unused_parameters=self.opt.get('find_unused_parameters', False))
        return DataParallel(net) if self.opt['num_gpu'] > 1 else net

    def save_network(self, net, net_label, current_iter, param_key='params'):
        nets = net if isinstance(net, list) else [net]
        keys = param_key if isinstance(param_key, list) else [param_key]
        state = {k: {(n[7:] if n.startswith('module.') else n): v.cpu()
                     for n, v in self.get_bare_model(m).state_dict().items()} for m, k in zip(nets, keys)}
        name = 'latest' if current_iter == -1 else current_iter
        atomic_save(state, os.path.join(self.opt['path']['models'], f'{net_label}_{name}.pth'))

    def save_training_state(self, epoch, current_iter):
        if current_iter == -1:
            return
        state = {'epoch': epoch, 'iter': current_iter, 'optimizers': [o.state_dict() for o in self.optimizers],
                 'schedulers': [s.state_dict() for s in self.schedulers]}
        atomic_save(state, os.path.join(self.opt['path']['training_states'], f'{current_iter}.state'))

    base_model.BaseModel.model_to_device = model_to_device
    base_model.BaseModel.save_network = base_model.master_only(save_network)
    base_model.BaseModel.save_training_state = base_model.master_only(save_training_state)


def _patch_realesrgan_device():
    # basicsr's RealESRNetModel and RealESRGANModel (1.4.2) put DiffJPEG and USMSharp (__init__) and the training-pair
    # queue (_dequeue_and_enqueue) on the GPU with .cuda(), whatever num_gpu says: on the CPU they stop at construction
    # ("Found no NVIDIA driver on your system"). Everything else they do follows self.device (feed_data's .to, the
    # noise and JPEG-quality draws on their input's device). Put those three on self.device too: with num_gpu != 0
    # that is 'cuda', the device .cuda() picks, so GPU runs are unchanged. __init__ is basicsr's (its three lines
    # with .to(self.device)); _dequeue_and_enqueue allocates the empty queue as basicsr does, then runs basicsr's
    # own method, which finds it and only fills and shuffles it. Can go when basicsr's models use self.device there.
    import functools

    import torch
    from basicsr.models.realesrgan_model import RealESRGANModel
    from basicsr.models.realesrnet_model import RealESRNetModel
    from basicsr.utils import DiffJPEG, USMSharp

    from irtoolkit.utils.errors import OptionError

    def patch(cls):
        basicsr_enqueue = cls._dequeue_and_enqueue

        def __init__(self, opt):
            super(cls, self).__init__(opt)
            self.jpeger = DiffJPEG(differentiable=False).to(self.device)  # simulate JPEG compression artifacts
            self.usm_sharpener = USMSharp().to(self.device)
            self.queue_size = opt.get('queue_size', 180)

        @functools.wraps(basicsr_enqueue)
        def _dequeue_and_enqueue(self):
            if not hasattr(self, 'queue_lr'):  # (queue_size, C, H, W) of LQ and of GT, zeros until filled
                b = self.lq.size(0)
                if self.queue_size % b:  # basicsr asserts this; an option error names the file and the key
                    where = f'{self.opt["opt_path"]}: ' if self.opt.get('opt_path') else ''
                    raise OptionError(f'{where}queue_size: {self.queue_size} is not a multiple of the batch size {b}')
                self.queue_lr = torch.zeros(self.queue_size, *self.lq.shape[1:], device=self.device)
                self.queue_gt = torch.zeros(self.queue_size, *self.gt.shape[1:], device=self.device)
                self.queue_ptr = 0
            basicsr_enqueue(self)

        __init__.__doc__ = cls.__init__.__doc__
        cls.__init__ = __init__
        cls._dequeue_and_enqueue = _dequeue_and_enqueue

    for cls in (RealESRNetModel, RealESRGANModel):
        patch(cls)


def _patch_filter2d_layout():
    # basicsr.utils.img_process_util.filter2D reflect-pads its (B, C, H, W) input and then .view()s it as
    # (1, B*C, H', W'). DiffJPEG returns a channels-last-strided view, and on the CPU torch's reflection pad keeps
    # that layout (on CUDA it does not: GPU runs never met this), so the next filter2D of Real-ESRGAN's degradation
    # on the CPU (second blur, final sinc) stops with "view size is not compatible with input tensor's size and
    # stride". Give it a contiguous input: the same values (a no-op for a contiguous one), so GPU results are
    # unchanged. Replaced in img_process_util (USMSharp) and in the two model modules, which imported the function
    # by name. Can go when basicsr reshapes instead of viewing there.
    import functools

    from basicsr.models import realesrgan_model, realesrnet_model
    from basicsr.utils import img_process_util

    basicsr_filter2d = img_process_util.filter2D

    @functools.wraps(basicsr_filter2d)
    def filter2D(img, kernel):
        return basicsr_filter2d(img.contiguous(), kernel)

    for module in (img_process_util, realesrnet_model, realesrgan_model):
        module.filter2D = filter2D


def apply():
    """Apply every patch once; safe to call repeatedly."""
    global _APPLIED
    if _APPLIED:
        return
    _alias_functional_tensor()
    _patch_perceptual_l2()
    _patch_lmdb_backend()
    _patch_basicsr_model_io()
    _patch_realesrgan_device()
    _patch_filter2d_layout()
    _APPLIED = True
