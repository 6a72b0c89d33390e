"""Templates: named, reusable images with revisions, shared through a registry.

``store`` keeps records and revisions under ``MVM_HOME/templates``; ``build``
turns a template's project into a revision; ``sync`` pushes and pulls
revisions to a :mod:`registry <mvm.templates.registry>`; ``integrity``
computes and checks their checksums.  See docs/templates.md.
"""
