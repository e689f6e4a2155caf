import json
import subprocess
import sys

import pytest

from lcasc import complexity
from lcasc.models import CNNSpec, LowComplexityCNN

# Paper Table 2 (exact MACs; METHOD-NOTES §4).
TABLE2 = [
    ("16-16-32-100", 14886, 18.59, 5404520),
    ("12-16-32-100", 14254, 17.86, 4156040),
    ("16-12-32-100", 13138, 16.85, 4129320),
    ("16-16-22-100", 11396, 15.11, 5286520),
    ("12-12-32-100", 12650, 16.26, 3174600),
    ("16-12-22-100", 10008, 13.73, 4040120),
    ("12-12-22-100", 9520, 13.14, 3085400),
]


@pytest.mark.parametrize("widths,params,size_kb,macs", TABLE2)
def test_counts_reproduce_paper_table2(widths, params, size_kb, macs):
    c = complexity.of_spec(CNNSpec.from_widths(widths))
    assert (c.params, c.size_kb, c.macs) == (params, size_kb, macs)


def closed_form_bytes(f1, f2, f3):
    return 9 * f1 * f2 + 9 * f2 * f3 + 200 * f3 + 4 * (9 * f1 + 1000 + f1 + f2 + f3 + 110) + 8


@pytest.mark.parametrize("widths", ["12-16-24-100", "16-16-32-100", "20-24-40-100"])
def test_size_matches_the_closed_form(widths):
    f1, f2, f3, _ = (int(v) for v in widths.split("-"))
    assert complexity.of_spec(CNNSpec.from_widths(widths)).size_bytes == closed_form_bytes(f1, f2, f3)


def test_params_equal_torch_parameters_plus_bn_statistics():
    model = LowComplexityCNN()
    torch_params = sum(p.numel() for p in model.parameters())
    assert complexity.count(model).params == torch_params + 2 * (16 + 16 + 32)


def test_ensemble_of_six_pruned_networks_sums_to_table3():
    members = [complexity.of_spec(CNNSpec.from_widths(w)) for w, *_ in TABLE2[1:]]
    ens = complexity.total(members)
    assert ens.params == 70966 and ens.size_kb == 92.95
    assert ens.within_dcase_limits
    big = complexity.total([complexity.of_spec(CNNSpec())] * 6)
    assert not big.within_dcase_limits  # 32.4 M MACs is over the 30 M limit


def test_kernel_size_changes_macs():
    k5 = complexity.of_spec(CNNSpec(kernel_size=5))
    k3 = complexity.of_spec(CNNSpec())
    assert k5.macs > k3.macs and k5.params > k3.params


def run_cli(*args):
    out = subprocess.run([sys.executable, "-m", "lcasc", "complexity", *args], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_cli_prints_one_json_object():
    assert run_cli("--widths", "16-16-32-100", "--json") == {
        "params": 14886, "macs": 5404520, "size_kb": 18.59, "within_dcase_limits": True}


def test_cli_sums_an_ensemble_and_lists_members():
    d = run_cli("--widths", "12-16-32-100", "--widths", "16-12-32-100", "--json")
    assert d["params"] == 14254 + 13138 and d["macs"] == 4156040 + 4129320
    assert [m["params"] for m in d["members"]] == [14254, 13138]
