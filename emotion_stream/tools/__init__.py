"""``emotion-stream produce`` and ``emotion-stream consume``: the user's tools for trying it.

Not part of the worker: they speak the same wire format as ``kafka-console-producer`` or
kcat, so nothing here is needed to use it. They take the worker's Kafka security settings
(the same ``EMOTION_STREAM_*`` variables, or options), checked by the same rules.

- :mod:`~emotion_stream.tools.produce`: lines (or the samples) -> the input topic.
- :mod:`~emotion_stream.tools.consume`: the output topic -> one printed line per record.
- :mod:`~emotion_stream.tools.formatting`: that line, with terminal controls escaped.
- :mod:`~emotion_stream.tools.samples`: the sample tweets.
- :mod:`~emotion_stream.tools.command`: the options both share, checked; exit statuses.
"""
