"""Operating a fleet: per-minute metrics (PutMetricData from workers, EMF lines from the Lambda) that add up to
what was moved, and `status --watch`, against moto (CloudWatch, SQS, DynamoDB, SSM) and SeaweedFS."""

from __future__ import annotations

import datetime
import json
import signal
import time
import uuid

from conftest import MiB, FakeContext, bucket_contents, copied, random_bytes


def metric_sums(stack, fleet: str) -> dict:
    """The Sum of each s3_upload metric of this fleet, as CloudWatch answers it."""
    cloudwatch = stack.aws('cloudwatch')
    now = datetime.datetime.now(datetime.timezone.utc)
    sums = {}
    for name in ('BytesRead', 'BytesWritten', 'ObjectsCompleted', 'ObjectsFailed', 'PartsSent'):
        points = cloudwatch.get_metric_statistics(
            Namespace='s3_upload', MetricName=name, Dimensions=[{'Name': 'Fleet', 'Value': fleet}],
            StartTime=now - datetime.timedelta(hours=1), EndTime=now + datetime.timedelta(minutes=5), Period=60,
            Statistics=['Sum'])['Datapoints']
        sums[name] = sum(point['Sum'] for point in points)
    return sums


def test_worker_metrics_add_up_to_what_the_run_moved(stack):
    objects = {f'data/m/{n}.bin': random_bytes(n * 300_000 + 1, n) for n in range(6)}
    objects['data/m/big.bin'] = random_bytes(12 * MiB, 99)
    stack.put_sources(objects)
    stack.send(json.dumps({'Src_bucket': stack.src, 'Src_key': 'data/m/gone.bin', 'Des_bucket': stack.dst,
                           'Des_key': 'copy/m/gone.bin', 'Size': 5}))
    fleet = f'fleet-{uuid.uuid4().hex[:8]}'
    settings = dict(CloudWatchEndpointURL=stack.moto.endpoint, FleetName=fleet)
    assert stack.run('jobsender', **settings).returncode == 0
    report = stack.tool.folder / 'worker-report.json'
    ran = stack.run('worker', '--once', '--report', str(report), timeout=120, **settings)
    assert ran.returncode == 1, ran.stderr[-3000:]                      # the missing source failed
    assert bucket_contents(stack.seaweed, stack.dst) == copied(stack, objects)
    moved, run = sum(len(body) for body in objects.values()), json.loads(report.read_text())
    assert run['files_failed'] >= 1 and run['parts_uploaded'] == 6 + 3     # six single PUTs, three parts
    assert metric_sums(stack, fleet) == {'BytesRead': moved, 'BytesWritten': moved, 'ObjectsCompleted': 7,
                                         'ObjectsFailed': run['files_failed'], 'PartsSent': 9}


def test_lambda_metrics_are_emf_lines_that_add_up_to_what_it_moved(stack, monkeypatch, capsys):
    import s3_upload_cluster
    from test_serverless import lambda_environment
    objects = {'data/l/a.txt': b'a' * 1000, 'data/l/b.bin': random_bytes(7 * MiB, 3)}
    stack.put_sources(objects)
    assert stack.run('jobsender', '--dry-run').returncode == 0
    lambda_environment(stack, monkeypatch, FleetName='lambda-fleet')
    records = [{'messageId': f'm-{n}', 'receiptHandle': f'r-{n}', 'body': json.dumps(
        {'Src_bucket': stack.src, 'Src_key': key, 'Des_bucket': stack.dst, 'Des_key': 'copy/' + key[5:],
         'Size': len(body)})} for n, (key, body) in enumerate(objects.items())]
    capsys.readouterr()
    assert s3_upload_cluster.lambda_handler({'Records': records}, FakeContext(300)) == {'batchItemFailures': []}
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]
    assert lines
    totals: dict = {}
    for record in lines:                     # as CloudWatch reads EMF: the declared metrics of each record
        [directive] = record['_aws']['CloudWatchMetrics']
        assert directive['Namespace'] == 's3_upload' and directive['Dimensions'] == [['Fleet']]
        assert record['Fleet'] == 'lambda-fleet' and isinstance(record['_aws']['Timestamp'], int)
        for metric in directive['Metrics']:
            totals[metric['Name']] = totals.get(metric['Name'], 0) + record[metric['Name']]
    moved = sum(len(body) for body in objects.values())
    assert totals['BytesRead'] == totals['BytesWritten'] == moved
    assert totals['ObjectsCompleted'] == 2 and totals.get('ObjectsFailed', 0) == 0


def test_status_watch_shows_the_fleet_moving_and_its_failures_until_ctrl_c(stack):
    objects = {f'data/w/{n:02}.bin': random_bytes(400_000, n) for n in range(12)}
    stack.put_sources(objects)
    stack.send(json.dumps({'Src_bucket': stack.src, 'Src_key': 'data/w/missing.bin', 'Des_bucket': stack.dst,
                           'Des_key': 'copy/w/missing.bin', 'Size': 5}))
    assert stack.run('jobsender').returncode == 0
    watch = stack.start('status', '--watch', '--every', '0.5', name='watch.ini')
    time.sleep(2)
    workers = [stack.start('worker', '--once', name=f'w{n}.ini', BandwidthLimit=1, MaxParallelFile=2) for n in range(2)]
    for worker in workers:
        worker.communicate(timeout=120)
    time.sleep(2)
    watch.send_signal(signal.SIGINT)
    out, err = watch.communicate(timeout=30)
    assert watch.returncode == 0, err
    lines = [line for line in out.splitlines() if ' objects ' in line]
    done = [int(line.split(' objects ')[1].split('/')[0]) for line in lines]
    assert done[0] < done[-1] == 12 and done == sorted(done)              # it moved, and the view followed it
    assert any('/s | ETA' in line and ' 0 B/s' not in line for line in lines)
    assert '12/13 done' in lines[-1] and '1 failed' in lines[-1]
    failed = {line.split()[1] for line in out.splitlines() if line.strip().startswith('FAILED')}
    assert failed == {f's3://{stack.dst}/copy/w/missing.bin'} and 'deleted' in out


# The templates ####################################################################################

def template(name: str) -> dict:
    from cfnlint.decode import decode
    from conftest import ROOT
    decoded, problems = decode(str(ROOT / 'deploy' / name))
    assert not problems
    return decoded


def resources_of(decoded: dict, kind: str) -> dict:
    return {name: body for name, body in decoded['Resources'].items() if body['Type'] == kind}


def test_the_templates_pass_cfn_lint():
    import subprocess
    import sys
    from conftest import ROOT
    lint = 'import sys; from cfnlint.runner import main; sys.exit(main())'
    done = subprocess.run([sys.executable, '-c', lint, *sorted(str(p) for p in (ROOT / 'deploy').glob('*.yaml'))],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_both_templates_wire_s3_events_a_dashboard_and_alarms_mailed_through_sns():
    for name in ('lambda.yaml', 'worker-fleet.yaml'):
        decoded = template(name)
        [policy] = resources_of(decoded, 'AWS::SQS::QueuePolicy').values()
        [statement] = policy['Properties']['PolicyDocument']['Statement']
        assert statement['Principal'] == {'Service': 's3.amazonaws.com'} and statement['Action'] == 'sqs:SendMessage'
        assert 'aws:SourceArn' in statement['Condition']['ArnLike']
        [dashboard] = resources_of(decoded, 'AWS::CloudWatch::Dashboard').values()
        body = json.dumps(dashboard['Properties']['DashboardBody'])
        for metric in ('ApproximateNumberOfMessagesVisible', 'ApproximateNumberOfMessagesNotVisible', 'BytesWritten',
                       'ObjectsCompleted', 'ObjectsFailed'):
            assert metric in body, (name, metric)
        assert ('ConcurrentExecutions' if name == 'lambda.yaml' else 'GroupInServiceInstances') in body
        [subscription] = resources_of(decoded, 'AWS::SNS::Subscription').values()
        assert subscription['Properties']['Protocol'] == 'email' and 'AlarmEmail' in decoded['Parameters']
        alarms = resources_of(decoded, 'AWS::CloudWatch::Alarm')
        mailed = {n for n, a in alarms.items() if {'Ref': 'AlarmTopic'} in a['Properties'].get('AlarmActions', [])}
        assert {'DeadLetterAlarm', 'FailuresAlarm'} <= mailed, name


def test_the_lambda_template_schedules_the_jobsender_hourly():
    decoded = template('lambda.yaml')
    [rule] = resources_of(decoded, 'AWS::Events::Rule').values()
    assert decoded['Parameters']['JobsenderSchedule']['Default'] == 'rate(1 hour)'
    [target] = rule['Properties']['Targets']
    function = decoded['Resources'][target['Arn']['Fn::GetAtt'][0]]
    assert function['Properties']['Handler'] == 's3_upload_cluster.jobsender_handler'
    assert 'S3UPLOAD_BucketPairsParameter' in function['Properties']['Environment']['Variables']


def test_the_fleet_starts_from_one_message_follows_the_backlog_and_runs_bbr():
    decoded = template('worker-fleet.yaml')
    group = decoded['Resources']['WorkerGroup']['Properties']
    assert group['MinSize'] == '0' and 'DesiredCapacity' not in group
    start = decoded['Resources']['WorkWaitingNoWorker']['Properties']
    expression = next(m['Expression'] for m in start['Metrics'] if 'Expression' in m)
    assert 'waiting >= 1' in expression and start['Threshold'] == 1 and start['EvaluationPeriods'] == 1
    first = decoded['Resources'][start['AlarmActions'][0]['Ref']]['Properties']
    assert first['AdjustmentType'] == 'ExactCapacity' and first['StepAdjustments'][0]['ScalingAdjustment'] == 1
    follow = decoded['Resources']['FollowBacklog']['Properties']['TargetTrackingConfiguration']
    assert follow['TargetValue'] == {'Ref': 'BacklogPerInstance'}
    user_data = json.dumps(decoded['Resources']['WorkerTemplate']['Properties']['LaunchTemplateData']['UserData'])
    assert 'net.ipv4.tcp_congestion_control = bbr' in user_data and 'net.core.default_qdisc = fq' in user_data
    assert 'amazon-cloudwatch-agent' in user_data and 's3_upload-jobsender.timer' in user_data
