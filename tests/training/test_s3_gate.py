"""The test gate in front of SeaweedFS: it lets a run write its first ``latest`` whole, then holds it."""

from __future__ import annotations

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ConnectionError as BotoConnectionError, ReadTimeoutError

from s3_gate import S3Gate
from stage_process import LATEST_WRITTEN


def _client(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        config=Config(retries={"max_attempts": 1}, read_timeout=2, connect_timeout=2,
                                      s3={"addressing_style": "path"}))


def test_the_gate_passes_the_latest_write_whole_then_holds_the_next_request(s3, bucket):
    """Files and then ``latest`` go up on one kept-alive connection, as a checkpoint's upload does: every one is
    stored (``latest`` with its body, however the client splits headers and body) and the gate holds what follows."""
    with S3Gate(s3.endpoint, LATEST_WRITTEN) as gate:
        client = _client(gate.url)
        for i in range(20):
            client.put_object(Bucket=bucket, Key=f"ckpt/step2/part{i}", Body=bytes(1000 * i))
            assert not gate.closed.is_set()
        client.put_object(Bucket=bucket, Key="ckpt/latest", Body=b"step2")
        assert gate.closed.wait(5)
        with pytest.raises((ReadTimeoutError, BotoConnectionError)):
            client.put_object(Bucket=bucket, Key="ckpt/step4/part0", Body=b"x")
    direct = _client(s3.endpoint)
    assert direct.get_object(Bucket=bucket, Key="ckpt/latest")["Body"].read() == b"step2"
    assert direct.get_object(Bucket=bucket, Key="ckpt/step2/part19")["Body"].read() == bytes(19000)
    assert "Contents" not in direct.list_objects_v2(Bucket=bucket, Prefix="ckpt/step4/")
