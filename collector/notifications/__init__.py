"""Alert notifications: the ``[[notify]]`` sinks (webhook, Slack, Alertmanager).

``payloads`` builds what each kind of sink is sent (pure), ``delivery`` holds a sink's bounded
queue and its retry schedule (pure), ``client`` posts one request (h11 over trio), ``notifier``
runs one sending task per sink and keeps what the checkpoint needs, ``health`` reports it.
"""
