"""The HTTP routes of the remediator, as Flask blueprints that ``create_app`` registers.

- :mod:`~remediator.routes.reads`: ``/healthz``, ``/status``, ``/history``, ``/metrics``
- :mod:`~remediator.routes.switches`: ``POST /downgrade``, ``/upgrade``, ``/reset``
- :mod:`~remediator.routes.webhooks`: ``POST /webhook/alertmanager``, ``/webhook/notify``

Routes are thin: they check the token, parse the request, call one entry point of the
remediator (or :mod:`remediator.queries`) and turn the result into JSON and a status code.
What they share is a :class:`~remediator.routes.common.Service`, built by ``create_app``.
"""
