"""compare.py on synthetic reports: a ratio that fell by more than the threshold is flagged and
fails the run; smaller changes, improvements and ratios present in one report only do not."""
import json
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import compare  # noqa: E402


def report(alibi: float, share: float, decode: float, cpu: str = "cpu A") -> dict:
    return {"cpu": {"model": cpu},
            "scoring": [{"case": "B8_H8_L512_D64/alibi_logits", "speedup": alibi}],
            "sgemm": {"share": share},
            "e2e": {"unary": [{"case": "B1 H8 L128 D64 logits", "speedup": 2.5}],
                    "decode": {"speedup": decode}}}


class CompareTest(unittest.TestCase):
    def test_flags_only_the_ratios_that_fell_past_the_threshold(self):
        _, fell = compare.compare(report(6.0, 0.5, 2.0), report(4.0, 0.45, 2.4), 0.2)
        self.assertEqual(fell, ["scoring B8_H8_L512_D64/alibi_logits"])

    def test_a_ratio_in_one_report_only_is_listed_not_flagged(self):
        new = report(6.0, 0.5, 2.0)
        new["e2e"]["unary"].append({"case": "new case", "speedup": 1.0})
        lines, fell = compare.compare(report(6.0, 0.5, 2.0), new, 0.2)
        self.assertEqual(fell, [])
        self.assertTrue(any("new case" in line and "only in one" in line for line in lines))

    def test_transport_ratios_are_compared(self):
        old, new = report(6.0, 0.5, 2.0), report(6.0, 0.5, 2.0)
        old["transport"] = {"rows": [{"case": "64MiB/f32", "speedup": 4.0}],
                            "halving": [{"case": "64MiB/bf16", "ratio": 1.9}]}
        new["transport"] = {"rows": [{"case": "64MiB/f32", "speedup": 3.0}],
                            "halving": [{"case": "64MiB/bf16", "ratio": 1.8}]}
        _, fell = compare.compare(old, new, 0.2)
        self.assertEqual(fell, ["transport 64MiB/f32 vs naive echo"])

    def test_exit_status_and_cpu_warning_from_the_command_line(self):
        with tempfile.TemporaryDirectory() as tmp:
            old, new = os.path.join(tmp, "old.json"), os.path.join(tmp, "new.json")
            with open(old, "w") as f:
                json.dump(report(6.0, 0.5, 2.0), f)
            with open(new, "w") as f:
                json.dump(report(6.0, 0.3, 2.0, cpu="cpu B"), f)
            proc = subprocess.run([sys.executable, os.path.join(HERE, "compare.py"), old, new],
                                  capture_output=True, text=True)
            self.assertEqual(proc.returncode, 1, proc.stdout)
            self.assertIn("different CPUs", proc.stdout)
            self.assertIn("ALiBi logits share of sgemm", proc.stdout)
            same = subprocess.run([sys.executable, os.path.join(HERE, "compare.py"), old, old],
                                  capture_output=True, text=True)
            self.assertEqual(same.returncode, 0, same.stdout)


if __name__ == "__main__":
    unittest.main()
