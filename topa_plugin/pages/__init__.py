"""Self-contained HTML pages (the explanation of an answer, the report of a run, TextVid quality).

Every page is one file that opens offline and from an attachment: Jinja2 templates with autoescaping
(``render``), charts drawn by matplotlib and embedded as SVG images (``charts``), video frames embedded
as JPEG data URIs (``images``). Nothing is fetched from the network, and no string from a doc, question,
option, caption or file name reaches the page unescaped.
"""
