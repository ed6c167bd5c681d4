"""The LiteRT variant follows the CPU: int8 with int8 dot products, float32 without."""

import pytest

from unet_tf.variants import VARIANTS, choose_variant, cpu_flags, int8_dot_product

AVX2 = {"sse4_2", "avx", "avx2", "fma"}                       # the AVX2-only EPYCs here
VNNI = AVX2 | {"avx512f", "avx512bw", "avx512_vnni"}          # this round's machine
ALDER_LAKE = AVX2 | {"avx_vnni"}
ARM_DOTPROD = {"fp", "asimd", "asimddp"}
ARM_OLD = {"fp", "asimd"}                                     # e.g. Cortex-A53 (Raspberry Pi 3)


@pytest.mark.parametrize("flags, expected", [
    (VNNI, "int8"), (ALDER_LAKE, "int8"), (ARM_DOTPROD, "int8"),
    (AVX2, "float32"), (ARM_OLD, "float32"), (set(), "float32")])
def test_the_choice_follows_the_cpu_flags(flags, expected):
    variant, reason = choose_variant(VARIANTS, flags)
    assert variant == expected
    assert ("int8 dot products" in reason) == (expected == "int8")
    assert "runs fastest" in reason


def test_only_what_was_exported_is_chosen_and_the_reason_says_so():
    assert choose_variant(["int8"], AVX2)[0] == "int8"
    variant, reason = choose_variant(["fp16", "int8"], AVX2)
    assert variant == "fp16" and "only int8, fp16 exported" in reason
    assert choose_variant(["float32", "fp16"], VNNI)[0] == "float32"


def test_a_3d_nets_reason_does_not_ask_for_the_int8_it_cannot_have():
    variant, reason = choose_variant(["float32", "fp16"], VNNI, volume=True)
    assert variant == "float32" and "no int8 3-D convolution" in reason
    assert "favour int8" not in reason and "runs fastest" in reason
    assert "only fp16 exported" in choose_variant(["fp16"], AVX2, volume=True)[1]


def test_a_requested_variant_wins_and_a_missing_one_is_refused():
    assert choose_variant(VARIANTS, VNNI, "float32") == ("float32", "asked for")
    with pytest.raises(ValueError, match="no fp16 export .*--format tflite-fp16"):
        choose_variant(["int8"], VNNI, "fp16")
    with pytest.raises(ValueError, match="variant must be one of"):
        choose_variant(VARIANTS, VNNI, "int4")
    with pytest.raises(ValueError, match="no TFLite export"):
        choose_variant([], VNNI)


def test_cpu_flags_are_read_from_x86_and_arm_cpuinfo(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 "
                   "avx512_vnni\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx2 avx512_vnni\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm "
                   "asimddp\nCPU implementer\t: 0x41\n")
    assert int8_dot_product(cpu_flags(x86)) == "AVX-512 VNNI"
    assert int8_dot_product(cpu_flags(arm)) == "ARM dotprod"
    assert int8_dot_product(cpu_flags(tmp_path / "none")) in (None, "ARM dotprod")  # macOS arm64
