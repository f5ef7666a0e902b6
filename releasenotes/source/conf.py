# Sphinx configuration of the mistral-hotload release notes.
#
# Built by ``tox -e releasenotes`` (sphinx-build -W: warnings are errors).
# reno's ``release-notes`` directive reads the notes in releasenotes/notes
# from the git history of the repository, so a note is shown once it is
# committed.

# -- General configuration --------------------------------------------------

extensions = [
    'reno.sphinxext',
    'openstackdocstheme',
]

project = 'mistral-hotload Release Notes'
copyright = '2026, mistral-hotload developers'
master_doc = 'index'
source_suffix = '.rst'
exclude_patterns = []
pygments_style = 'native'

# The release notes are not versioned like the code: each page names the
# versions it covers.
version = ''
release = ''

# -- openstackdocstheme -----------------------------------------------------

openstackdocs_use_storyboard = False
openstackdocs_auto_name = False
openstackdocs_auto_version = False
openstackdocs_pdf_link = False

# -- Options for HTML output ------------------------------------------------

html_theme = 'openstackdocs'
# The theme serves docs.openstack.org: keep its Google Analytics tag and
# badge off pages that are not the OpenStack Foundation's.
html_theme_options = {
    'analytics_tracking_code': '',
    'display_badge': False,
    'root_title': 'mistral-hotload',
}
html_static_path = ['_static']
templates_path = ['_templates']
