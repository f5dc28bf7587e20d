"""The export-only rewrites compute the same function and are undone afterwards."""

import torch

from pocketdiff.export.components import TwoPassGroupNorm, TwoPassLayerNorm, component_specs, xnnpack_friendly


def test_two_pass_norms_match_torch():
    torch.manual_seed(0)
    gn, ln = torch.nn.GroupNorm(4, 16, eps=1e-6), torch.nn.LayerNorm(32)
    for p in (*gn.parameters(), *ln.parameters()):
        torch.nn.init.normal_(p)
    x, h = torch.randn(2, 16, 8, 8) * 3 + 5, torch.randn(2, 77, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(TwoPassGroupNorm(gn)(x), gn(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(TwoPassLayerNorm(ln)(h), ln(h), atol=1e-5, rtol=1e-5)
    plain = torch.nn.GroupNorm(4, 16, affine=False)
    torch.testing.assert_close(TwoPassGroupNorm(plain)(x), plain(x), atol=1e-5, rtol=1e-5)


def test_xnnpack_friendly_is_equivalent_and_undone(tiny_pipe):
    specs = component_specs(tiny_pipe)
    gen = torch.Generator().manual_seed(0)
    args = {s.name: tuple(torch.randint(0, 1000, x.shape, generator=gen, dtype=x.dtype) if not x.is_floating_point()
                          else (torch.randn(x.shape, generator=gen) if x.dim() else x) for x in s.example)
            for s in specs}

    def outputs():
        with torch.no_grad():
            return {s.name: s.module(*args[s.name]) for s in specs}

    def kinds():
        return sorted({type(m).__name__ for part in (tiny_pipe.unet, tiny_pipe.vae, tiny_pipe.text_encoder)
                       for m in part.modules()})

    before, names_before = outputs(), kinds()
    with xnnpack_friendly(tiny_pipe):
        inside = outputs()
        assert "TwoPassGroupNorm" in kinds() and "GroupNorm" not in kinds()
    assert kinds() == names_before and "TwoPassGroupNorm" not in kinds()
    assert tiny_pipe.text_encoder.config._attn_implementation == "sdpa"
    for name, ref in before.items():
        for a, b in zip(ref if isinstance(ref, tuple) else (ref,), inside[name] if isinstance(ref, tuple)
                        else (inside[name],)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
