"""The committed sample configuration matches the options in the code."""

import os

from oslo_config import generator

TOP = os.path.join(os.path.dirname(__file__), '..', '..')


def test_committed_sample_is_up_to_date(tmp_path):
    output = tmp_path / 'sample.conf'
    generator.main([
        '--config-file',
        os.path.join(TOP, 'etc', 'oslo-config-generator',
                     'mistral-hotload.conf'),
        '--output-file', str(output)])
    with open(os.path.join(TOP, 'etc', 'mistral-hotload.conf.sample')) as f:
        committed = f.read()
    assert output.read_text() == committed, (
        'etc/mistral-hotload.conf.sample is stale: run tox -e genconfig')
