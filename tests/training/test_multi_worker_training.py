"""Several TensorFlow worker processes on localhost (MultiWorkerMirroredStrategy over gRPC)."""

import pytest

from tests import multi_worker_checks as checks


@pytest.fixture
def npz(shared_data):
    return shared_data / "cifar10" / "cifar10_train_exact.npz"


def test_two_workers_equal_one_process_and_survive_preemption(tmp_path, npz):
    checks.check_two_workers_equal_one_process_and_survive_preemption(tmp_path, npz,
                                                                      uses_tf=True)


def test_killed_worker_stops_the_others(tmp_path, shared_data):
    checks.check_killed_worker_stops_the_others(tmp_path)
