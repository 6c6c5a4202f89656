"""The CUDA-graph timings of README.md, as they were run (bf16, channels_last, 224 px, random weights; one unused
line, an output kept for a comparison that was never made, removed).

Run from the repository root on a GPU machine: ``PYTHONPATH=src python3 docs/results/bench-gpu/graph_timing.py``.
It was run before ``scnet.cuda_graph`` and the bench modes ``graph``/``deploy_graph`` existed; those record
and replay the same way (warm-up on a side stream, one recorded call, replays).
"""
import time

import torch
import torchvision

import scnet

torch.backends.cudnn.benchmark = True


def t(f, x, n=20):
    for _ in range(3):
        f(x)
    torch.cuda.synchronize()
    s = time.perf_counter()
    for _ in range(n):
        f(x)
    torch.cuda.synchronize()
    return (time.perf_counter() - s) / n * 1e3


def graphed(m, x):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            m(x)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        m(x)
    return lambda _: g.replay()


for b in (128, 1):
    x = torch.randn(b, 3, 224, 224, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        for name in ("scnet50", "scnet50_plain"):
            m = scnet.create_model(name).cuda().eval()
            d = scnet.deploy(m).to(torch.bfloat16)
            g = graphed(d, x)
            print(name, b, "deploy %.2f ms graph %.2f ms" % (t(d, x), t(g, x)))
        r = torchvision.models.resnet50().cuda().eval().to(torch.bfloat16).to(memory_format=torch.channels_last)
        gr = graphed(r, x)
        print("resnet50", b, "eager_cl %.2f ms graph %.2f ms" % (t(r, x), t(gr, x)))
