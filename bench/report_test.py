"""report.py's transport rows from a transport benchmark's JSON: the best repetition of each case,
the naive echo's time over attnscore's (in band over TCP or a Unix socket, and via shared memory)
against the 3x target for
replies of 16 MiB and more, float32's time over each 16-bit dtype's against 2x, and the socket
floor beside both."""
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import report  # noqa: E402


def run(name: str, ms: float, mib: float, run_type: str = "iteration") -> dict:
    return {"name": f"{name}/repeats:3/real_time", "run_type": run_type, "real_time": ms,
            "time_unit": "ms", "MiB": mib}


class TransportRowsTest(unittest.TestCase):
    def rows(self) -> dict:
        runs = [run("server/16MiB/f32", 6.0, 16), run("server/16MiB/f32", 5.0, 16),
                run("server/16MiB/f32", 1.0, 16, run_type="aggregate"),  # a mean: ignored
                run("naive/16MiB/f32", 12.0, 16), run("echo/16MiB/f32", 9.0, 16),
                run("server/16MiB/bf16", 2.0, 8), run("naive/16MiB/bf16", 5.0, 8),
                run("server/64MiB/f32", 20.0, 64), run("naive/64MiB/f32", 80.0, 64),
                run("socket/16MiB/f32", 4.0, 16), run("socket/16MiB/bf16", 2.5, 8),
                run("shm/16MiB/f32", 3.5, 16), run("shm/16MiB/f32", 3.0, 16),
                run("shm/16MiB/bf16", 1.5, 8), run("shm/64MiB/f32", 30.0, 64),
                run("shm/32MiB/f32", 1.0, 32)]  # no naive run: no row
        return report.transport_from_runs(runs)

    def test_best_repetition_and_targets_by_reply_size(self):
        rows = {row["case"]: row for row in self.rows()["rows"]
                if not row["case"].endswith(" via shared memory")}
        self.assertEqual(set(rows), {"16MiB/f32", "16MiB/bf16", "64MiB/f32"})
        self.assertEqual(rows["16MiB/f32"]["server_ms"], 5.0)
        self.assertAlmostEqual(rows["16MiB/f32"]["speedup"], 2.4)
        self.assertEqual(rows["16MiB/f32"]["echo_ms"], 9.0)
        self.assertFalse(rows["16MiB/f32"]["met"])
        self.assertIsNone(rows["16MiB/bf16"]["target"])  # an 8 MiB reply
        self.assertTrue(rows["64MiB/f32"]["met"])

    def test_socket_floor_bounds_what_any_server_could_show(self):
        rows = {row["case"]: row for row in self.rows()["rows"]}
        self.assertEqual(rows["16MiB/f32"]["socket_ms"], 4.0)
        self.assertAlmostEqual(rows["16MiB/f32"]["floor_speedup"], 3.0)  # naive 12 / floor 4
        self.assertIsNone(rows["64MiB/f32"]["socket_ms"])  # not measured
        self.assertIsNone(rows["64MiB/f32"]["floor_speedup"])
        self.assertAlmostEqual(self.rows()["halving"][0]["socket_ratio"], 1.6)  # 4.0 / 2.5

    def test_shared_memory_rows_follow_the_in_band_ones_with_the_same_target(self):
        cases = [row["case"] for row in self.rows()["rows"]]
        self.assertEqual(cases, ["16MiB/bf16", "16MiB/f32", "64MiB/f32",
                                 "16MiB/bf16 via shared memory", "16MiB/f32 via shared memory",
                                 "64MiB/f32 via shared memory"])
        rows = {row["case"]: row for row in self.rows()["rows"]}
        f32 = rows["16MiB/f32 via shared memory"]
        self.assertEqual(f32["server_ms"], 3.0)  # the best repetition
        self.assertEqual(f32["naive_ms"], 12.0)
        self.assertAlmostEqual(f32["speedup"], 4.0)
        self.assertEqual(f32["target"], 3.0)
        self.assertTrue(f32["met"])
        self.assertIsNone(f32["socket_ms"])  # no reply bytes on the socket: no floor
        self.assertIsNone(f32["floor_speedup"])
        self.assertIsNone(f32["echo_ms"])
        self.assertIsNone(rows["16MiB/bf16 via shared memory"]["target"])  # an 8 MiB reply
        self.assertAlmostEqual(rows["64MiB/f32 via shared memory"]["speedup"], 80.0 / 30.0)
        self.assertFalse(rows["64MiB/f32 via shared memory"]["met"])
        # The in-band rows are as they were.
        self.assertEqual(rows["16MiB/f32"]["server_ms"], 5.0)
        self.assertEqual(rows["16MiB/f32"]["socket_ms"], 4.0)
        # Only attnscore-server's in-band replies enter the 16-bit comparison.
        self.assertEqual([row["case"] for row in self.rows()["halving"]], ["16MiB/bf16"])

    def test_sixteen_bit_replies_against_float32(self):
        halving = self.rows()["halving"]
        self.assertEqual(len(halving), 1)
        self.assertEqual(halving[0]["case"], "16MiB/bf16")
        self.assertAlmostEqual(halving[0]["ratio"], 2.5)
        self.assertTrue(halving[0]["met"])

    def test_markdown_shows_both_tables(self):
        text = report.markdown({"commit": "c", "date": "d", "cpu": {"model": "m", "flags": []},
                                "kernels": [], "scoring": [], "transport": self.rows()})
        self.assertIn("| 64MiB/f32 | 64 | 20.00 | 80.00 | 4.00x | - | - | >= 3.0x | yes |", text)
        self.assertIn("| 16MiB/f32 | 16 | 5.00 | 12.00 | 2.40x | 4.00 | 3.00x | >= 3.0x | NO |",
                      text)
        self.assertIn("| 16MiB/bf16 | 5.00 | 2.00 | 2.50x | 1.60x | >= 2.0x | yes |", text)
        self.assertIn("| 16MiB/f32 via shared memory | 16 | 3.00 | 12.00 | 4.00x | - | - | "
                      ">= 3.0x | yes |", text)
        self.assertIn("| 64MiB/f32 via shared memory | 64 | 30.00 | 80.00 | 2.67x | - | - | "
                      ">= 3.0x | NO |", text)
        self.assertLess(text.index("| 64MiB/f32 | 64 |"),
                        text.index("| 16MiB/bf16 via shared memory |"))


class UnixSocketRowsTest(unittest.TestCase):
    """The same server over its --listen-unix socket: its own rows against the naive pair over
    TCP, bounded by a Unix socket pair's floor, and its own 16-bit comparison."""

    def rows(self) -> dict:
        runs = [run("server/64MiB/f32", 40.0, 64), run("naive/64MiB/f32", 120.0, 64),
                run("unix/64MiB/f32", 32.0, 64), run("unix/64MiB/f32", 30.0, 64),
                run("unix/64MiB/bf16", 20.0, 32), run("naive/64MiB/bf16", 44.0, 32),
                run("socket/64MiB/f32", 25.0, 64), run("unixsocket/64MiB/f32", 15.0, 64),
                run("unixsocket/64MiB/bf16", 6.0, 32), run("shm/64MiB/f32", 8.0, 64)]
        return report.transport_from_runs(runs)

    def test_rows_between_tcp_and_shared_memory_with_the_unix_floor(self):
        rows = self.rows()["rows"]
        self.assertEqual([row["case"] for row in rows],
                         ["64MiB/f32", "64MiB/bf16 via a Unix socket",
                          "64MiB/f32 via a Unix socket", "64MiB/f32 via shared memory"])
        unix = {row["case"]: row for row in rows}["64MiB/f32 via a Unix socket"]
        self.assertEqual(unix["server_ms"], 30.0)  # the best repetition
        self.assertAlmostEqual(unix["speedup"], 4.0)  # naive 120 over TCP / 30
        self.assertTrue(unix["met"])
        self.assertEqual(unix["socket_ms"], 15.0)  # the Unix pair, not TCP's 25
        self.assertAlmostEqual(unix["floor_speedup"], 8.0)
        self.assertIsNone(unix["echo_ms"])
        bf16 = {row["case"]: row for row in rows}["64MiB/bf16 via a Unix socket"]
        self.assertAlmostEqual(bf16["speedup"], 2.2)
        self.assertFalse(bf16["met"])

    def test_sixteen_bit_over_the_unix_socket_against_its_own_float32(self):
        halving = self.rows()["halving"]
        self.assertEqual([row["case"] for row in halving], ["64MiB/bf16 via a Unix socket"])
        self.assertAlmostEqual(halving[0]["ratio"], 1.5)  # unix f32 30 / unix bf16 20
        self.assertFalse(halving[0]["met"])
        self.assertAlmostEqual(halving[0]["socket_ratio"], 2.5)  # Unix floor 15 / 6

    def test_markdown_row(self):
        text = report.markdown({"commit": "c", "date": "d", "cpu": {"model": "m", "flags": []},
                                "kernels": [], "scoring": [], "transport": self.rows()})
        self.assertIn("| 64MiB/f32 via a Unix socket | 64 | 30.00 | 120.00 | 4.00x | 15.00 | "
                      "8.00x | >= 3.0x | yes |", text)
        self.assertIn("| 64MiB/bf16 via a Unix socket | 30.00 | 20.00 | 1.50x | 2.50x | "
                      ">= 2.0x | NO |", text)


class DecodeFloorTest(unittest.TestCase):
    CASE = "decode_B32_H8_Lq1_Lk2048_D64/alibi_logits+probs"

    def test_floor_from_the_read_bandwidth_and_the_key_stream_beside_it(self):
        floor_s = report.DECODE_BYTES / 20e9
        row = report.decode_floor_row({
            "stream/256MiB#GBps": 20.0, "keydots/256MiB#GBps": 18.0,
            f"core/{self.CASE}": 1.5 * floor_s, f"literal/{self.CASE}": 6.0 * floor_s})
        self.assertAlmostEqual(row["floor_ms"], floor_s * 1e3)
        self.assertAlmostEqual(row["alibi"]["core_x_floor"], 1.5)
        self.assertAlmostEqual(row["alibi"]["max_speedup"], 6.0)
        self.assertNotIn("relative", row)
        text = report.markdown({"commit": "c", "date": "d", "cpu": {"model": "m", "flags": []},
                                "kernels": [], "scoring": [], "decode_floor": row})
        self.assertIn("alibi: core 1.50x the floor, literal 6.00x", text)
        self.assertIn("(ScaledDotRows over the same 256 MiB): 18.0 GB/s, 90% of the read "
                      "bandwidth.", text)

    def test_sixteen_bit_keys_against_their_floor_and_float32(self):
        floor_16_s = report.DECODE_BYTES_16 / 20e9
        row = report.decode_floor_row({
            "stream/256MiB#GBps": 20.0, f"core/{self.CASE}": 4e-3,
            report.DECODE_16_CASE.format("bf16"): 2e-3})
        self.assertAlmostEqual(row["floor_16_ms"], floor_16_s * 1e3)
        self.assertAlmostEqual(row["sixteen_bit"]["bf16"]["float32_over_this"], 2.0)
        self.assertNotIn("f16", row["sixteen_bit"])
        text = report.markdown({"commit": "c", "date": "d", "cpu": {"model": "m", "flags": []},
                                "kernels": [], "scoring": [], "decode_floor": row})
        self.assertIn(f"bf16 2.00 ms, {2e-3 / floor_16_s:.2f}x its floor, 2.00x faster than "
                      "float32's core.", text)
        self.assertNotIn("16-bit", report.markdown(
            {"commit": "c", "date": "d", "cpu": {"model": "m", "flags": []}, "kernels": [],
             "scoring": [], "decode_floor": report.decode_floor_row({"stream/256MiB#GBps": 20.0})}))

    def test_no_key_stream_figure_without_its_run(self):
        row = report.decode_floor_row({"stream/256MiB#GBps": 20.0})
        self.assertNotIn("key_dots_gbps", row)
        self.assertIsNone(report.decode_floor_row({}))


class KeepBestTest(unittest.TestCase):
    def test_each_case_keeps_its_shortest_time_and_highest_rate(self):
        best = {}
        report.keep_best(best, {"core/x": 0.010, "literal/x": 0.040, "stream/256MiB": 0.009,
                                "stream/256MiB#GBps": 29.0})
        report.keep_best(best, {"core/x": 0.007, "literal/x": 0.045, "stream/256MiB": 0.011,
                                "stream/256MiB#GBps": 24.0})
        report.keep_best(best, {"core/x": 0.012, "literal/x": 0.038, "sgemm/1024#GFLOPS": 150.0})
        self.assertEqual(best, {"core/x": 0.007, "literal/x": 0.038, "stream/256MiB": 0.009,
                                "stream/256MiB#GBps": 29.0, "sgemm/1024#GFLOPS": 150.0})
        rows = {row["case"]: row for row in report.scoring_rows(
            {"core/B8_H8_L512_D64/alibi_logits": best["core/x"],
             "literal/B8_H8_L512_D64/alibi_logits": best["literal/x"]})}
        self.assertAlmostEqual(rows["B8_H8_L512_D64/alibi_logits"]["speedup"], 0.038 / 0.007)
        header = {"commit": "c", "date": "d", "cpu": {"model": "m", "flags": []}, "kernels": [],
                  "scoring": list(rows.values())}
        self.assertIn("(same kernels, best of 3 rounds)",
                      report.markdown(dict(header, scoring_rounds=3)))
        self.assertIn("(same kernels) |", report.markdown(header))  # an older report


if __name__ == "__main__":
    unittest.main()
