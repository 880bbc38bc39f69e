"""Per-call host+device time of SDPA fwd+bwd over many distinct (B, T) shapes, by backend set."""
import json, sys, time
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
which = sys.argv[1]
sets = {"default": None,
        "no_cudnn": [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH],
        "cudnn_only": [SDPBackend.CUDNN_ATTENTION], "efficient_only": [SDPBackend.EFFICIENT_ATTENTION]}
dev, H, d = "cuda", 12, 32
shapes = [(16 + (i * 7) % 17, 20 + (i * 13) % 90) for i in range(48)]
def call(B, T):
    q, k, v = (torch.randn(B, H, T, d, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    lens = torch.randint(T // 2, T + 1, (B,), device=dev)
    keep = torch.arange(T, device=dev)[None] < lens[:, None]
    bias = torch.zeros(B, 1, 1, T, device=dev, dtype=torch.bfloat16).masked_fill(~keep[:, None, None], torch.finfo(torch.bfloat16).min)
    torch.cuda.synchronize(); t = time.perf_counter()
    if sets[which] is None:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=0.1)
    else:
        with sdpa_kernel(sets[which]):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=0.1)
    out.float().sum().backward(); torch.cuda.synchronize()
    return time.perf_counter() - t
call(8, 16)  # CUDA/context warm-up on a shape not in the list
try:
    cold = [call(*s) for s in shapes]; warm = [call(*s) for s in shapes]
    r = {"set": which, "cold_ms_mean": 1e3 * sum(cold) / len(cold), "warm_ms_mean": 1e3 * sum(warm) / len(warm),
         "cold_ms_max": 1e3 * max(cold), "shapes": len(shapes), "cudnn_sdp_enabled": torch.backends.cuda.cudnn_sdp_enabled()}
except Exception as err:
    r = {"set": which, "error": f"{type(err).__name__}: {str(err)[:300]}"}
print(json.dumps(r))
