"""``musegate duplicates``: the library's near-duplicate groups, as a table or JSON."""

from __future__ import annotations

import argparse
import json

from analysis.store import LibraryStore
from cli.features import _analysed_id, _with_service
from musegate.config import Config
from musegate.duplicates import duplicates_report
from musegate.library import describe_track, track_json
from musegate.services import LibraryService


async def cmd_duplicates(config: Config, args: argparse.Namespace) -> int:
    async def run(store: LibraryStore, service: LibraryService) -> int:
        snap = service.snapshot
        only = await _analysed_id(store, snap, args.track) if args.track else None
        report = await duplicates_report(store, snap.catalogue, snap.index, only)
        if args.json:
            print(json.dumps({
                "groups": [
                    {
                        "representative": g.representative.id,
                        "tracks": [{**track_json(t), "duration": t.duration,
                                    "representative": t.id == g.representative.id}
                                   for t in g.tracks],
                        "pairs": [{"a": p.track_a, "b": p.track_b,
                                   "cosine": round(p.verdict.cosine, 4),
                                   "method": p.verdict.method,
                                   "bit_error_rate": None if p.verdict.bit_error_rate is None
                                   else round(p.verdict.bit_error_rate, 4),
                                   "offset_s": None if p.verdict.offset_s is None
                                   else round(p.verdict.offset_s, 3)}
                                  for p in g.pairs],
                    }
                    for g in report.groups
                ],
                "analysed": report.analysed,
                "without_fingerprint": report.without_fingerprint,
            }, indent=2))
            return 0
        copies = sum(len(g.tracks) - 1 for g in report.groups)
        print(f"{len(report.groups)} duplicate groups ({copies} extra copies) "
              f"among {report.analysed} analysed tracks")
        for n, g in enumerate(report.groups, 1):
            print(f"\n  group {n}:")
            for t in g.tracks:
                mark = "keep" if t.id == g.representative.id else "copy"
                length = f"{t.duration:7.1f} s" if t.duration else "      ? s"
                print(f"    {mark}  {t.id:>6}  {length}  {describe_track(t)}")
                if t.path:
                    print(f"                          {t.path}")
        if report.without_fingerprint:
            print(f"\n{report.without_fingerprint} tracks were analysed before duplicate "
                  "fingerprints existed and are compared by a stricter rule that misses cuts; "
                  "re-analysing them fills the fingerprint in")
        return 0

    return await _with_service(config, run)
