"""The launcher's environment variables, read in one place for the trainer and encode.py."""
import pytest

from dig_scale.launch_env import LaunchEnvError, detect_place, slurm_tasks_on_node


@pytest.mark.parametrize("env, expected", [
    ({"RANK": "5", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "8"}, (5, 16, 1, 8, "torchrun")),
    ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3"}, (3, 4, 3, 4, "torchrun")),  # no LOCAL_WORLD_SIZE: one node
    # a Kubernetes indexed job: torchrun in each pod, JOB_COMPLETION_INDEX its node rank
    ({"RANK": "9", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "8", "JOB_COMPLETION_INDEX": "1"},
     (9, 16, 1, 8, "torchrun")),
    ({"SLURM_PROCID": "9", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
      "SLURM_TASKS_PER_NODE": "8(x2)"}, (9, 16, 1, 8, "slurm")),
    ({"SLURM_PROCID": "4", "SLURM_NTASKS": "5", "SLURM_LOCALID": "0", "SLURM_NODEID": "1",
      "SLURM_TASKS_PER_NODE": "8", "SLURM_STEP_TASKS_PER_NODE": "4,1"}, (4, 5, 0, 1, "slurm")),  # the step's own
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, (0, 1, 0, 1, "single")),  # an allocation without srun tasks
    ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "8", "SLURM_PROCID": "0",
      "SLURM_NTASKS": "1"}, (3, 8, 3, 8, "torchrun")),  # torchrun inside an sbatch script wins
    ({}, (0, 1, 0, 1, "single")),
])
def test_launcher_environments(env, expected):
    place = detect_place(env)
    assert (place.rank, place.world_size, place.local_rank, place.local_world_size, place.launcher) == expected
    assert place.is_main == (expected[0] == 0)
    assert place.hosts == expected[1] // expected[3]


def test_slurm_tasks_per_node_lists():
    assert [slurm_tasks_on_node("4(x2),3", n) for n in range(3)] == [4, 4, 3]
    with pytest.raises(LaunchEnvError, match="expected Slurm's form"):
        slurm_tasks_on_node("4x2", 0)


@pytest.mark.parametrize("env, message", [
    ({"RANK": "one", "WORLD_SIZE": "2"}, r"\$RANK='one': expected an integer"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "rank 2 of 2"),
    ({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "2"}, "local rank 0 of 2"),  # stale RANK under srun
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_NODEID": "3", "SLURM_TASKS_PER_NODE": "2(x2)"},
     r"\$SLURM_NODEID=3 but tasks per node '2\(x2\)' lists 2 nodes"),
])
def test_unusable_values_are_named(env, message):
    with pytest.raises(LaunchEnvError, match=message):
        detect_place(env)
