"""SAFNet model: 2D branch, 3D branch, similarity modules, fusion head and losses."""
