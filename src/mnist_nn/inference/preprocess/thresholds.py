"""Every tuned threshold and constant of the preprocessing, in one place, each with what it controls and why.

Most were tuned on the synthetic photo-like sets of ``mnist_nn.testing.synthetic`` (photo_set seeds 0-7,
number_set seed 1) and checked against MNIST's own digits; the measurements behind them are in the
comments. They are plain module constants (Python ints and floats, never numpy scalars), so that the
arithmetic they take part in keeps the dtypes it always had. Grey levels are 0-255; sizes are pixels
unless named otherwise. The other preprocessing modules hold no numbers but 0, 1, 2 and 255 (and plain
indices such as ``box[3]``); tests/test_preprocess.py checks it.
"""

from __future__ import annotations

import numpy as np

# --------------------------------------------------------------------------- MNIST's form (facts, not tuned)

MNIST_SIZE = 28  # MNIST's field: 28x28 pixels
MNIST_BOX = 20  # MNIST's size-normalization box: the digit's longer side is fitted to 20 px
MNIST_CENTRE = 14.0  # where MNIST's centres of mass lie (mean over the test set: 13.99, 14.01)
# MNIST's binary NIST digits were anti-aliased: a binary edge lies where the grey level crosses half strength.
HALF_STRENGTH = 0.5
HALF_GREY = 127.5  # half strength on the 0-255 scale: the ink of a stroke copy, when loops are counted
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)  # a pixel touches all 8 neighbours, diagonals too

# --------------------------------------------------------------------------- decoding

FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")  # the formats Pillow may open; any other is refused
# 50 megapixels: a 12 MP phone photo passes; a few KB of compressed zeros claiming
# 100,000 x 100,000 pixels (a decompression bomb) is refused from its header alone.
DEFAULT_MAX_PIXELS = 50_000_000
SIXTEEN_BIT_WHITE = 65535.0  # white in a 16-bit image: Pillow's convert("L") clips there instead of scaling
REASON_CHARS = 160  # a decoder's message is cut to this many characters: one readable line in an error
# Ink on transparency: a pixel is opaque above half alpha (127 of 255), transparent below a tenth (26 of 255).
OPAQUE_ALPHA = 127
CLEAR_ALPHA = 26
CLEAR_BORDER_SHARE = 0.8  # the paper is transparent when this share of the border is (a sticker's card is not)
# The ink is one colour when the opaque pixels' 5th and 95th percentile tones lie within a quarter of the
# grey scale (64 levels): a drawing app's single pen, not a picture with dark and light parts.
ONE_COLOUR_PERCENTILES = (5, 95)
ONE_COLOUR_SPREAD = 64.0

# --------------------------------------------------------------------------- finding the ink

WORK_SIZE = 1024  # analysis happens at most at this size: a digit needs no more, and it bounds the work per image
DENOISE_SIGMA = 0.8  # the light blur's sigma, in pixels of the working image: tames sensor noise, keeps a 1 px line
SMALL_IMAGE = 48  # images narrower than this are neither blurred nor flattened: every pixel of a stroke counts
# The paper's typical brightness is the median of every 4th pixel each way: the light varies slowly, 16x cheaper.
PAPER_SAMPLE_STEP = 4
MAD_TO_SIGMA = 1.4826  # median absolute deviation -> standard deviation, for Gaussian noise (1 / 0.6745)
# Hysteresis thresholds: ink rises above the low one and touches something above the high one. Each is the
# larger of a multiple of the paper's noise (sigma) and a fraction of the ink's contrast (of the strongest ink).
LOW_NOISE = 3.0  # 3 sigma: a pixel of noise only rarely passes
HIGH_NOISE = 5.0  # 5 sigma: a blob of noise practically never holds such a pixel
LOW_THRESHOLD = 0.05  # 5% of the contrast: a stroke's faint stretches (a pen running dry) stay joined to it
HIGH_THRESHOLD = 0.2  # 20%: a blob must hold ink a fifth as strong as the strongest to be ink, not a smudge
# The unblurred image must show ink too (over the low threshold) where its noise is under this fraction of the contrast.
CRISP_NOISE = 0.05
# Ink must stand out from the background by this much (of 255) to count as a digit at all: in an image
# already in MNIST form, and in a photo once its light is flattened (pencil, a pen running dry).
MIN_CONTRAST = 40.0
MIN_INK_CONTRAST = 20.0
VISIBLE_NOISE = 8.0  # ...and by 8 sigma of the paper's noise: fainter marks are "too faint" to read reliably
# Under 6 sigma of noise, or 4 grey levels, nothing is there at all: "no ink" (blank, uniform), not "too faint".
BLANK_NOISE = 6.0
BLANK_CONTRAST = 4.0
PERCENT = 100  # percentiles are given in percent, as numpy's are (arrays.percentile)
FULL_STROKE_PERCENTILE = 90  # a full stroke's strength: the ink's 90th percentile, so a few dark specks do not set it
FULL_STROKE_MARGIN = 1.0  # ...and at least a grey level over the high threshold, so faint ink is not stretched to noise

# --------------------------------------------------------------------------- uneven light and polarity

# A drawing's paper is one tone: the whole border within half a grey level of its median (one 8-bit
# level), and so is at least half the image. Its light is not flattened (the fast path: about 1.5 ms instead
# of 14 for the page's 112 px drawing, under load; 993 of 1,000 MNIST test digits drawn that way are read by
# the bundled model either way). Photos have sensor noise, never this flat a paper: of 1,800 photo-like
# images (seeds 0-2, 1001-1003) only 3 low-resolution ones, enlarged from a few dozen pixels, qualify;
# the fresh sets still read 598 of 600.
CLEAN_PAPER_NOISE = 0.5
CLEAN_PAPER_SHARE = 0.5
FLAT_SIZE = 128  # uneven light is estimated at most at this size: it varies slowly, and the morphology stays cheap
# Polarity is decided on an even smaller copy, against a median background (either polarity's ink is a minority).
POLARITY_SIZE = 32
BORDER_PARTS = 20  # the border the paper is read from is a 20th of the shorter side wide (at least a pixel)
POLARITY_MARGIN = 2  # one extreme is the ink when it is twice as far from the border's median as the other
# The rough background's median window is two thirds of the image (2 of its 3 parts), plus one to make it odd:
# ink covers less than half of such a window, so its median is the paper for either polarity.
POLARITY_WINDOW_PARTS = 3
POLARITY_WINDOW_TAKEN = 2
POLARITY_NOISE = 3  # what stands out from the rough background by 3 sigma counts towards a polarity
NOISE_FLOOR = 1.0  # a grey level added to that sigma: a noiseless drawing must not count its every edge
MIN_INK_RANGE = 1.0  # ink spanning less than a grey level has no stroke to measure: its width is taken as 1
# The ink's strength is the 99.5th percentile of its depth, so a few outliers do not set it.
INK_PERCENTILE = 99.5
ROUGH_INK_SHARE = 0.5  # the rough ink mask takes at least half that strength: a shadow it missed is no stroke
MIN_FOOTPRINT = 3  # the smallest morphology footprint (and median window): a pixel and its neighbours
WIDEST_PARTS = 2  # the widest footprint is half the copy's shorter side: anything wider is the light, not ink
# The closing's footprint starts 1.5 strokes + 3 px wide: wider than the strokes, their crossings too, to fill
# them; any wider and it could not follow a shadow (2.5 strokes instead of 1.5: 99.0% of shadowed photos read,
# not 100%).
FOOTPRINT_STROKES = 1.5
FOOTPRINT_PAD = 3
FOOTPRINT_GROWTH = 1.5  # the footprint grows by half while it leaves sharp-edged ink unfilled...
FILLED_DEPTH = 0.5  # ...where "filled" is at least half as deep as the widest footprint fills it...
UNFILLED_SHARE = 0.02  # ...until at most 2% of the ink is left unfilled (else a marker's strokes read hollow)
# The half-wide footprint is taken where it differs from the wide one by less than a quarter of the ink's strength.
TIGHT_UNFILLED = 0.25
SMOOTH_PARTS = 4  # the paper is smoothed with sigma a quarter of the footprint: its square steps go, the light stays
DEEP_SHARE = 0.5  # sharp-edged ink is looked for at least half as deep as the deepest
# A blob is ink when the brightness changes across its outline by at least an eighth of its depth per pixel:
# a pen's stroke ends within a pixel or two, a shadow fades over a tenth of the page.
SHARP_EDGE_PARTS = 8

# --------------------------------------------------------------------------- stroke width

# Stroke width in MNIST's 20 px box (stroke_width): over the test set 1.55 (1st percentile), 1.88 (5th),
# 2.81 (median), 4.56 (95th), 5.80 (99th), 7.79 (99.9th). Thinner strokes than STROKE_LOW are grown to
# STROKE_TARGET (a fine pen: 96.7% -> 99.0% of 300 synthetic fine-pen photos read by cnn-best). Strokes
# thicker than STROKE_HIGH (all but 1% of MNIST's) are thinned to its bold end, STROKE_THINNED: the
# tutorial MLP then reads 89.7% of 300 thick-marker photos instead of 88.0%, cnn-best 98.3% either way.
# Thinning further hurts: every digit over 4.2 thinned to 2.4 left cnn-best 96.7% (a loop the marker
# filled has no stroke left to thin).
STROKE_LOW = 1.5
STROKE_TARGET = 2.8
STROKE_HIGH = 6.0
STROKE_THINNED = 4.2
# Thinning peels every stroke alike, so it must keep this share of the strokes' skeleton, or peel less
# deep. A marker's 6 whose loop filled is a blob with a thinner stem: peeled for the blob's width, the
# stem went (27-54% of the skeleton kept), and the 20 px fit blew the blob up into a '0'. Of the 82
# thinned among 3,000 photo-like images, three in four keep 95-100% at full depth. With this check the
# bundled model misreads 42 of 8,000 photo-like images instead of 51, cnn-best 36 instead of 43.
SKELETON_KEPT = 0.9
STROKE_SIZE = 80  # strokes are measured and changed on a copy this wide (4x MNIST's box): cheap, and fine enough
MIN_HOLE = 4  # a loop is a hole of at least 4 pixels: a pinhole in a thick stroke is no loop

# --------------------------------------------------------------------------- digits and numbers

# A single digit is a few pieces at most (a broken stroke, a 5's bar); more similar blobs are not one digit.
MAX_BLOBS = 12
MAX_BLOBS_MULTI = 80  # a number of many digits, each in a few pieces
# A blob is a speck of noise under 5% of the largest blob's area (2% in a number, whose digits differ in size),
# or under 4 pixels in any case.
SPECK_SHARE = 0.05
SPECK_SHARE_MULTI = 0.02
SPECK_PIXELS = 4
OVERLAP_SHARE = 0.5  # pieces overlapping horizontally by half the narrower one's width are one digit
STACKED_HEIGHT = 0.6  # overlapping pieces one of which is under 0.6 line heights tall are stacked: a 5's bar
# Pieces within 3% of the line height (at least a pixel) of each other, together no wider than a digit's
# height, are one stroke broken in two.
TOUCHING_GAP = 0.03
MIN_GAP = 1.0
LEFTOVER_AREA = 0.15  # a group under 15% of the median group's area is a leftover (a dot, a stroke's tip)...
LEFTOVER_DISTANCE = 0.3  # ...that joins the nearest group within 0.3 line heights, else is dropped
# A piece wider than 1.25 times its height (at least 0.8 line heights) is digits written touching...
WIDE_RATIO = 1.25
WIDE_MIN_HEIGHT = 0.8
# ...cut at the column with the least ink between 30% and 70% of its width (never at its faint ends).
CUT_FROM = 0.3
CUT_TO = 0.7
