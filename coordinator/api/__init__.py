"""The coordinator's HTTP control API (Starlette, served by uvicorn inside ``fedmq serve``).

``app.py`` the routes, ``server.py`` uvicorn on a thread, ``token.py`` the bearer token
file, ``client.py`` the stdlib client ``fedmq train`` and ``fedmq demo`` use.
"""
