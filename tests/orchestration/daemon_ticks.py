"""What the Dagster daemon does for svdpipe's automation, tick by tick, on the real code location and instance.

Run as a script in the environment of a project (``SVDPIPE_HOME``, ``DAGSTER_HOME``): it loads
``orchestration.definitions`` as ``svdpipe ui`` does, and until nothing more is requested it evaluates the
sensors that start running by default (the new-videos sensor's tick, with its dynamic partitions, and the default
automation-condition sensor's evaluation of the eager conditions) and launches what they request: one run per
asset partition, upstream first, executed in this process on the persistent instance. Prints a JSON summary: the
sensors' default statuses and every launched run (tick, sensor, assets, partition, asset checks, success), in
order.
"""

from __future__ import annotations

import json
import sys

import dagster as dg


def main(max_ticks: int = 12) -> dict:
    from orchestration.cli import dagster_home
    from orchestration.definitions import defs

    dagster_home()  # what `svdpipe ui` uses: $DAGSTER_HOME, else <project home>/.dagster
    instance = dg.DagsterInstance.get()
    sensors = {s.name: s for s in defs.sensors}
    job = defs.resolve_implicit_global_asset_job_def()
    graph = defs.resolve_asset_graph()
    level = {key: i for i, key in enumerate(graph.toposorted_asset_keys)}
    summary = {"default_status": {n: s.default_status.value for n, s in sensors.items()}, "runs": [],
               "settled": False}
    cursor = None
    for n in range(max_ticks):
        requests = []  # (sensor, asset keys, partition key)
        new_videos = sensors["new_videos_sensor"]
        if new_videos.default_status == dg.DefaultSensorStatus.RUNNING:
            with dg.build_sensor_context(instance=instance, definitions=defs, resources=defs.resources) as ctx:
                tick = new_videos(ctx)
            if isinstance(tick, dg.SensorResult):
                for add in tick.dynamic_partitions_requests or []:
                    instance.add_dynamic_partitions(add.partitions_def_name, list(add.partition_keys))
                target = sorted(new_videos.asset_selection.resolve(graph))  # what a request without one runs
                requests += [(new_videos.name, list(r.asset_selection or target), r.partition_key)
                             for r in tick.run_requests or []]
        automation = sensors["default_automation_condition_sensor"]
        if automation.default_status == dg.DefaultSensorStatus.RUNNING:
            evaluated = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
            cursor = evaluated.cursor
            requests += [(automation.name, [key], p) for key in graph.toposorted_asset_keys
                         for p in evaluated.get_requested_partitions(key)]
        if not requests:
            summary["settled"] = True  # a tick that requested nothing: the chain has run as far as it goes
            break
        for sensor, keys, partition in sorted(requests, key=lambda r: level[r[1][0]]):  # upstream first
            run = job.execute_in_process(instance=instance, partition_key=partition, asset_selection=keys,
                                         raise_on_error=False, tags={"dagster/sensor_name": sensor})
            checks = {f"{c.asset_key.to_user_string()}:{c.check_name}": c.passed
                      for c in run.get_asset_check_evaluations()}
            summary["runs"].append({"tick": n, "sensor": sensor, "partition": partition, "checks": checks,
                                    "assets": [k.to_user_string() for k in keys], "success": run.success})
    return summary


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 12)))
