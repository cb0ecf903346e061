"""Create the MLflow server's artifact bucket when it doesn't exist (idempotent): the init step of
mlflow/k8s/mlflow.yaml, run before the server starts.

Reads MLFLOW_ARTIFACTS_DESTINATION (s3://BUCKET/PREFIX), MLFLOW_S3_ENDPOINT_URL (MinIO, Ceph),
AWS_DEFAULT_REGION and the credentials from the environment, as the server does.
"""

import os
import sys


def main() -> int:
    import boto3
    from botocore.exceptions import ClientError

    dest = os.environ.get("MLFLOW_ARTIFACTS_DESTINATION", "")
    if not dest.startswith("s3://") or not dest[len("s3://"):].split("/")[0]:
        print(f"create_bucket: MLFLOW_ARTIFACTS_DESTINATION {dest!r} is not s3://BUCKET/...; nothing to create")
        return 0
    bucket = dest[len("s3://"):].split("/")[0]
    region = os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    s3 = boto3.client("s3", endpoint_url=os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None, region_name=region)
    try:
        s3.head_bucket(Bucket=bucket)
        print(f"create_bucket: s3://{bucket} exists")
        return 0
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            print(f"create_bucket: s3://{bucket}: {exc} (check the credentials in the mlflow-s3 secret)",
                  file=sys.stderr)
            return 1
    extra = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    s3.create_bucket(Bucket=bucket, **extra)
    print(f"create_bucket: created s3://{bucket}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
