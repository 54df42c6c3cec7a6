"""One NAFBlock's forward + backward on the CPU in each memory layout, eager and ``torch.compile``d.

What ``train.channels_last`` and ``train.compile`` change at the level where they act, without the noise of a whole
training step: the layouts alternate inside one process, ``--repeats`` rounds of ``--passes`` passes each, medians.

    OMP_NUM_THREADS=2 python benchmarks/bench_block.py --threads 2
    python benchmarks/bench_block.py --width 64 --batch 4 --size 128 --compile
"""
import argparse
import statistics
import time

import torch

from irtoolkit.archs.nafnet_arch import NAFBlock


def fwd_bwd_seconds(block, x, passes):
    x = x.detach().clone().requires_grad_()
    start = time.perf_counter()
    for _ in range(passes):
        block(x).sum().backward()
    return (time.perf_counter() - start) / passes


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--width', type=int, default=64)
    p.add_argument('--batch', type=int, default=4)
    p.add_argument('--size', type=int, default=128)
    p.add_argument('--threads', type=int, default=None)
    p.add_argument('--repeats', type=int, default=8)
    p.add_argument('--passes', type=int, default=3)
    p.add_argument('--compile', action='store_true', help='also torch.compile the block (inductor)')
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    block = NAFBlock(args.width)
    with torch.no_grad():  # non-zero residual scales, so both branches carry gradient
        block.beta.normal_()
        block.gamma.normal_()
    x = torch.randn(args.batch, args.width, args.size, args.size)
    block_cl = NAFBlock(args.width).to(memory_format=torch.channels_last)
    block_cl.load_state_dict(block.state_dict())
    cl = x.to(memory_format=torch.channels_last)
    arms = {'NCHW eager': (block, x), 'channels-last eager': (block_cl, cl)}
    ref = block(x)
    diff = (block_cl(cl) - ref).abs().max().item()
    first = {}
    if args.compile:
        for name, (net, inp) in list(arms.items()):
            compiled = torch.compile(net)
            start = time.perf_counter()
            diff = max(diff, (compiled(inp) - ref).abs().max().item())
            fwd_bwd_seconds(compiled, inp, 1)
            first[name.replace('eager', 'compiled')] = time.perf_counter() - start
            arms[name.replace('eager', 'compiled')] = (compiled, inp)
    times = {name: [] for name in arms}
    for _ in range(args.repeats):
        for name, (net, inp) in arms.items():
            times[name].append(fwd_bwd_seconds(net, inp, args.passes))
    print(f'# NAFBlock width {args.width}, input ({args.batch}, {args.width}, {args.size}, {args.size}), forward + '
          f'backward, {torch.get_num_threads()} threads, torch {torch.__version__}; {args.repeats} alternating rounds '
          f'of {args.passes} passes; largest output difference between arms {diff:.1e}')
    print('| arm | ms per pass (median) | rounds (ms) | first call incl. compile (s) |')
    print('|---|---:|---|---:|')
    for name, ts in times.items():
        rounds = ' '.join(f'{1000 * t:.0f}' for t in ts)
        print(f'| {name} | {1000 * statistics.median(ts):.0f} | {rounds} | '
              f'{f"{first[name]:.1f}" if name in first else "-"} |')


if __name__ == '__main__':
    main()
