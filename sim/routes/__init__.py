"""The simulator's HTTP routes, one blueprint per resource; ``sim.server.create_app`` registers them.

``base`` holds what they share (the blueprint that records each route's name, the app's world, reading a
request's arguments); ``gate`` is what every request passes (account, faults, key, saving, errors).
"""
