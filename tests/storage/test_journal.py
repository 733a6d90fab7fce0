"""The journal of opened streams: records come back in order from the file a checkpoint names
on, a record torn by a kill mid-write is ignored, pruned files are gone."""

from __future__ import annotations

from pathlib import Path

from collector.storage.journal import Journal


def test_records_come_back_in_order_from_a_file_on(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.append([["rtc", 1], ["rtc", 2]])
    second = journal.rotate()
    journal.append([["http", 3]])
    journal.close()
    again = Journal(tmp_path)
    assert list(again.read(0)) == [["rtc", 1], ["rtc", 2], ["http", 3]]
    assert list(again.read(second)) == [["http", 3]]
    assert again.seq == second + 1  # appends of a new process go to a new file


def test_a_torn_last_record_is_ignored(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.append([["rtc", 1], ["rtc", "two"]])
    journal.close()
    (path,) = tmp_path.iterdir()
    path.write_bytes(path.read_bytes()[:-2])  # killed mid-write
    assert list(Journal(tmp_path).read(0)) == [["rtc", 1]]


def test_prune_deletes_the_files_a_checkpoint_holds(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.append([["rtc", 1]])
    kept = journal.rotate()
    journal.append([["rtc", 2]])
    journal.prune(kept)
    assert [p.name for p in tmp_path.iterdir()] == [f"journal-{kept}"]
    assert list(journal.read(0)) == [["rtc", 2]]


def test_a_failed_write_is_counted_not_raised(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("a file where the directory should be")
    journal = Journal(tmp_path / "state")
    journal.append([["rtc", 1]])
    assert journal.errors == 1
    assert journal.records == 0
