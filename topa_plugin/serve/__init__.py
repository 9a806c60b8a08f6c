"""The web demo behind ``topa serve``: a Gradio page and the ``/answer`` API over one loaded ``Asker``.

``app`` builds the page and its one answering function, ``uploads`` checks and cleans up what users send,
``examples`` lists the videos offered for one click."""
