"""``momos inspect``: what a ``.momos`` file holds, where its bytes go, and (``--compare``) how it
compares with generic compressors applied to the same weights."""

from __future__ import annotations

import json
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "inspect", help="describe a .momos file (--compare: against gzip/bz2/lzma/zstd)",
        description="Read a .momos file (checking it completely) and print its format version, "
                    "block size, normalization and scales, quantization (QAT), motifs, bits per weight, "
                    "size breakdown and its size against float32. --compare adds its size against gzip -9, "
                    "bz2 -9, lzma -9 and zstd at its maximum level applied to the float32 bytes of the same "
                    "weights (slow on big models: minutes for lzma -9 on hundreds of MB).")
    parser.add_argument("file", help=".momos file")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--compare", action="store_true",
                        help="also compress the dense float32 weights with gzip, bz2, lzma and zstd")
    parser.add_argument("--fast", action="store_true",
                        help="with --compare: faster compressor settings (gzip 6, lzma preset 0, zstd 15)")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from momos.cli import UsageError
    from momos.fileformat import FormatError, read

    if args.fast and not args.compare:
        raise UsageError("--fast sets the compressors of --compare; add --compare")
    try:
        state, info = read(args.file)
    except FormatError as error:
        raise UsageError(str(error)) from None
    if args.json:
        raw, compressed = sizes(state, args)
        report = {"file": args.file, **info.to_dict(), "float32_bytes": raw}
        if compressed is not None:
            report["compressed_bytes"] = compressed
        print(json.dumps(report, indent=2))
        return 0
    print(f"file             {args.file}")
    print_summary(info)
    sys.stdout.flush()   # the file's own breakdown now; the compressors may take minutes
    raw, compressed = sizes(state, args)
    print_comparison(info.file_bytes, raw, compressed or {})
    return 0


def sizes(state, args) -> tuple[int, dict[str, int] | None]:
    """The dense float32 bytes of ``state``, and with --compare their generic compressed sizes."""
    if args.compare:
        from momos.complexity import generic_sizes   # the compressors' dependencies only when asked

        return generic_sizes(state, fast=args.fast)
    return float32_bytes(state), None


def float32_bytes(state) -> int:
    """The size of every floating tensor of ``state`` as float32: the dense weights' bytes."""
    return 4 * sum(t.numel() for t in state.values() if t.is_floating_point())


def print_summary(info) -> None:
    codebooks = info.codebooks
    k = f"k = {info.num_motifs} motifs" + (f" in {len(codebooks)} codebooks" if len(codebooks) > 1 else "")
    tile = f" (tiles {info.tile_shape[0]}x{info.tile_shape[1]})" if info.tile_shape else ""
    codings = sorted({c.coding for c in codebooks})
    print(f"format           momos version {info.version}")
    print(f"mosaic           s = {info.block_size}{tile}, scope {info.scope}, {k} ({info.motif_storage}), "
          f"{info.num_blocks:,} blocks, indices {'/'.join(codings)}")
    if info.normalize == "none":
        print("normalize        none (raw values, no scales)")
    else:
        per = "tensor" if info.normalize == "tensor" else "output channel (1-D tensors: per tensor)"
        print(f"normalize        {info.normalize}: {info.num_scales:,} power-of-two scales, one per {per}, "
              f"{info.scale_bytes:,} bytes")
    print(f"quantization     {quantization_line(info.quantization)}")
    print(f"weights          {info.mosaic_weights:,} in the mosaic, {info.num_values:,} values in "
          f"{info.num_tensors} tensors")
    own = "motifs + indices + scales" if info.normalize != "none" else "motifs + indices"
    print(f"bits per weight  {info.bits_per_weight:.3f} (whole file), "
          f"{info.mosaic_bits_per_weight:.3f} ({own} per mosaic weight)")
    print(f"size (bytes)     header {info.header_bytes:,} | motifs {info.motif_bytes:,} | indices "
          f"{info.index_bytes:,} | scales {info.scale_bytes:,} | other {info.other_bytes:,} | "
          f"total {info.file_bytes:,}")


def quantization_line(bits: dict[str, int]) -> str:
    """E.g. ``8-bit symmetric per tensor (QAT) of 3 tensors: a.weight, b.weight, c.weight; ...``."""
    if not bits:
        return "none (the weights as stored)"
    qs = "/".join(str(q) for q in sorted(set(bits.values())))
    names = ", ".join(list(bits)[:4]) + (", ..." if len(bits) > 4 else "")
    return (f"{qs}-bit symmetric per tensor (QAT) of {len(bits)} tensors: {names}; stored latent, loaded "
            "quantized; steps derived from the weights (0 bytes)")


def print_comparison(file_bytes: int, raw: int, compressed: dict[str, int]) -> None:
    print(f"vs float32       {raw:,} bytes: the file is {file_bytes / raw:.4f} of it ({raw / file_bytes:.1f}x smaller)")
    for name, size in compressed.items():
        print(f"vs {name:<13} {size:,} bytes: the file is {file_bytes / size:.4f} of it")
