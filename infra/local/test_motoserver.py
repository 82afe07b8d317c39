"""The local stack's S3 request-rate model (motoserver.S3Limits), on a clock the test moves."""

from __future__ import annotations

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))

from motoserver import S3Limits  # noqa: E402


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def served(limits: S3Limits, method: str, requests: int, bucket: str = "b") -> int:
    return sum(limits.admit(bucket, method) for _ in range(requests))


class S3LimitsTest(unittest.TestCase):
    def test_a_second_serves_the_rate_and_throttles_past_it(self) -> None:
        clock = Clock()
        limits = S3Limits({"write_per_second": 10, "read_per_second": 20}, clock)
        self.assertEqual(served(limits, "PUT", 15), 10)
        # Reads and writes are counted apart, as S3 rates them.
        self.assertEqual(served(limits, "GET", 25), 20)
        clock.now += 0.5
        self.assertEqual(served(limits, "DELETE", 10), 5)
        stats = limits.stats()["prefixes"]
        self.assertEqual([(b["class"], b["throttled"]) for b in stats], [("read", 5), ("write", 10)])

    def test_sustained_load_grows_the_capacity_when_the_trigger_is_the_load(self) -> None:
        clock = Clock()
        limits = S3Limits(
            {"write_per_second": 10, "grow_after_seconds": 3, "grow_factor": 2, "max_per_second": 40,
             "grow_on": "load"},
            clock,
        )
        rates = []
        for _ in range(8):
            # 9 a second: never throttled, yet busy (90% of the rate).
            for _ in range(9):
                self.assertTrue(limits.admit("b", "PUT"))
                clock.now += 0.1
            clock.now += 0.1
            rates.append(limits.stats()["prefixes"][0]["rate"])
        self.assertEqual(rates[0], 10)
        self.assertEqual(rates[-1], 20, rates)
        self.assertEqual(limits.stats()["prefixes"][0]["throttled"], 0)
        # An idle second starts the count again.
        quiet = S3Limits({"write_per_second": 10, "grow_after_seconds": 3, "grow_on": "load"}, clock)
        for _ in range(10):
            quiet.admit("b", "PUT")
            clock.now += 1.0
        self.assertEqual(quiet.stats()["prefixes"][0]["rate"], 10)

    def test_buckets_are_limited_apart(self) -> None:
        limits = S3Limits({"write_per_second": 3}, Clock())
        self.assertEqual(served(limits, "PUT", 5, "one"), 3)
        self.assertEqual(served(limits, "PUT", 5, "two"), 3)

    def test_no_rate_means_no_limit(self) -> None:
        limits = S3Limits({"write_per_second": 2}, Clock())
        self.assertEqual(served(limits, "GET", 1000), 1000)

    def test_sustained_throttling_grows_the_capacity_up_to_its_ceiling(self) -> None:
        clock = Clock()
        limits = S3Limits(
            {"write_per_second": 10, "grow_after_seconds": 2, "grow_factor": 2, "max_per_second": 30},
            clock,
        )
        rates = []
        for _ in range(12):
            served(limits, "PUT", 100)
            rates.append(limits.stats()["prefixes"][0]["rate"])
            clock.now += 1.0
        self.assertEqual(rates[0], 10)
        self.assertEqual(rates[2], 20, rates)
        self.assertEqual(rates[-1], 30, rates)
        # What a second serves follows the grown rate.
        clock.now += 5
        self.assertEqual(served(limits, "PUT", 100), 30)

    def test_a_pause_in_throttling_restarts_the_growth_clock(self) -> None:
        clock = Clock()
        limits = S3Limits({"write_per_second": 10, "grow_after_seconds": 2}, clock)
        served(limits, "PUT", 20)
        clock.now += 1.5
        served(limits, "PUT", 5)  # within the refill: throttling ended
        clock.now += 1.0
        served(limits, "PUT", 20)
        self.assertEqual(limits.stats()["prefixes"][0]["rate"], 10)

    def test_a_delete_objects_counts_each_key_and_is_served_whole_when_the_bucket_is_full(self) -> None:
        clock = Clock()
        limits = S3Limits({"write_per_second": 10}, clock)
        self.assertTrue(limits.admit("b", "POST", 25, delete=True))
        # A debt of 15 requests: a second and a half before the next.
        clock.now += 1.0
        self.assertFalse(limits.admit("b", "PUT"))
        clock.now += 0.75
        self.assertEqual(served(limits, "PUT", 10), 2)

    def test_deletes_can_be_rated_apart_from_other_writes(self) -> None:
        limits = S3Limits({"write_per_second": 100, "delete_per_second": 2}, Clock())
        self.assertEqual(served(limits, "DELETE", 5), 2)
        self.assertFalse(limits.admit("b", "POST", 3, delete=True))
        self.assertEqual(served(limits, "PUT", 50), 50)

    def test_per_key_delete_errors_are_used_up(self) -> None:
        limits = S3Limits({"delete_key_errors": 3}, Clock())
        self.assertEqual(limits.take_delete_key_errors(2), 2)
        self.assertEqual(limits.take_delete_key_errors(5), 1)
        self.assertEqual(limits.take_delete_key_errors(5), 0)
        self.assertEqual(limits.stats()["delete_key_errors_answered"], 3)

    def test_a_bad_setting_is_refused_by_name(self) -> None:
        for config, name in (
            ({"write_per_second": -1}, "write_per_second"),
            ({"grow_factor": 0.5}, "grow_factor"),
            ({"delete_key_errors": -2}, "delete_key_errors"),
        ):
            with self.assertRaisesRegex(ValueError, name):
                S3Limits(config)


if __name__ == "__main__":
    unittest.main()
