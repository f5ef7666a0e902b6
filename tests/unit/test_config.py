"""The committed sample configuration matches the options in the code."""

import os

from oslo_config import generator

from hotload import conf as hotload_conf

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


def test_without_config_file_mistral_conf_then_our_own_are_read(
        tmp_path, monkeypatch):
    """A bare ``mistral-hotload status`` on a node installed as the docs
    say reads the [hotload] section the daemon reads."""
    mistral_conf = tmp_path / 'mistral.conf'
    mistral_conf.write_text('[hotload]\nstate_dir = /srv/from-mistral\n'
                            'action_prefix = mistral\n')
    own = tmp_path / 'mistral-hotload.conf'
    own.write_text('[hotload]\naction_prefix = own\n')
    monkeypatch.setattr(hotload_conf, 'DEFAULT_CONFIG_FILES',
                        [str(mistral_conf), str(own),
                         str(tmp_path / 'absent.conf')])
    conf = hotload_conf.load()
    try:
        assert conf.hotload.state_dir == '/srv/from-mistral'
        assert conf.hotload.action_prefix == 'own'
    finally:
        # cfg.CONF is global: leave it as a run without files would.
        conf(args=[], project='mistral-hotload', default_config_files=[],
             default_config_dirs=[])
