"""``python -m keras_relaxeq.zoo.publish``: publish a recipe run, or republish an entry."""

import sys

from keras_relaxeq.zoo.publish.command import main

sys.exit(main())
