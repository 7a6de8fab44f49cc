"""Synthetic `latest` links and what `get_last_checkpoint` sees through the mount."""

import os
import stat

import pytest
from transformers.trainer_utils import get_last_checkpoint

from support import sha256_file


@pytest.mark.parametrize("link,target", [("proj-a/job1/latest", "checkpoint-10"),
                                         ("proj-a/job2/latest", "checkpoint-5")])
def test_job_latest_points_to_the_highest_checkpoint_number(dataset_mount, link, target):
    assert stat.S_ISLNK(os.lstat(dataset_mount / link).st_mode)
    assert os.readlink(dataset_mount / link) == target
    assert sorted(os.listdir(dataset_mount / link)) == ["rank-0", "rank-1"]


@pytest.mark.parametrize("link,target", [("proj-a/latest", "job2/checkpoint-5"),
                                         ("proj-b/latest", "job-real-latest/checkpoint-3")])
def test_project_latest_points_to_the_most_recently_written_checkpoint(dataset_mount, dataset, link, target):
    assert os.readlink(dataset_mount / link) == target
    project = link.split("/")[0]
    rel = "rank-0/model.safetensors"
    assert sha256_file(dataset_mount / link / rel) == dataset.sha256[f"{project}/{target}/{rel}"]


def test_latest_is_listed_as_a_symlink(dataset_mount):
    entries = {e.name: e for e in os.scandir(dataset_mount / "proj-a/job1")}
    assert sorted(entries) == ["checkpoint-1", "checkpoint-10", "checkpoint-2", "latest"]
    assert entries["latest"].is_symlink() and not entries["checkpoint-10"].is_symlink()


@pytest.mark.parametrize("job,last", [("proj-a/job1", "checkpoint-10"), ("proj-a/job2", "checkpoint-5"),
                                      ("proj-b/job-real-latest", "checkpoint-3"),
                                      ("proj-b/job-dir-latest", "checkpoint-2")])
def test_get_last_checkpoint_returns_the_highest_number(dataset_mount, job, last):
    assert get_last_checkpoint(str(dataset_mount / job)) == str(dataset_mount / job / last)


def test_real_object_named_latest_wins_over_the_link(dataset_mount, dataset):
    latest = dataset_mount / "proj-b/job-real-latest/latest"
    assert stat.S_ISREG(os.lstat(latest).st_mode)
    assert sha256_file(latest) == dataset.sha256["proj-b/job-real-latest/latest"]


def test_real_directory_named_latest_wins_over_the_link(dataset_mount):
    latest = dataset_mount / "proj-b/job-dir-latest/latest"
    assert stat.S_ISDIR(os.lstat(latest).st_mode)
    assert os.listdir(latest) == ["notes.txt"]
