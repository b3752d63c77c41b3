"""The input CNN's training data: which slices teach the order head, and what the MRI head learns against."""
import numpy as np

from brainseg import input_net
from conftest import make_slice


def test_slices_holding_a_channel_twice_do_not_teach_the_channel_order():
    rng = np.random.default_rng(3)
    image = make_slice(rng, 64)[0].astype(np.float32)
    image[..., 0] = np.clip(image[..., 0] * 0.7 + rng.normal(0, 20, image.shape[:2]), 0, 255)  # three different channels
    image[..., 2] = np.roll(image[..., 1], 9, axis=1)
    flair_twice = image.copy()
    flair_twice[..., 2] = flair_twice[..., 1] + rng.normal(0, 0.5, image.shape[:2])  # as kaggle_3m replaced a missing post
    all_flair = np.repeat(image[..., 1:2], 3, -1)
    x = np.stack([input_net.net_input(a) for a in (image, flair_twice, all_flair)])
    assert input_net.ambiguous_order(x).tolist() == [False, True, True]


def test_negatives_hold_photographs_and_logo_marks_at_net_size():
    rng = np.random.default_rng(0)
    photo, marks = input_net._photo(rng), input_net._marks(rng)
    assert photo.ndim == 3 and photo.shape[-1] == 3 and photo.std() > 5  # a picture, not a blank
    assert marks.shape[-1] == 3 and (marks == 0).mean() > 0.3 and marks.max() > 40  # marks on black
    neg = input_net.negatives(40, np.random.default_rng(1))
    assert neg.shape == (40, 3, input_net.NET_SIZE, input_net.NET_SIZE) and np.isfinite(neg).all()
    again = input_net.negatives(40, np.random.default_rng(1))
    assert np.array_equal(neg, again)  # drawn from the seed alone


def test_both_nets_train_and_answer_in_their_shapes():
    rng = np.random.default_rng(2)
    slices = [make_slice(rng, 64)[0] for _ in range(66)]
    net = input_net.train(np.stack([input_net.net_input(a) for a in slices]), epochs=1)
    lp, mri = input_net.predict(net, np.stack([input_net.net_input(a) for a in slices[:3]]))
    assert lp.shape == (3, input_net.N_ORDER) and mri.shape == (3,) and np.allclose(np.exp(lp).sum(1), 1, atol=1e-5)
    small = np.stack([np.asarray(a, np.float32).repeat(2, 0).repeat(2, 1) for a in slices])  # 128 px
    single = input_net.train_single(small, epochs=1)
    p = input_net.predict_single(single, np.stack([input_net.single_input(a[..., 1]) for a in slices[:3]]))
    assert p.shape == (3, 3) and np.allclose(p.sum(1), 1, atol=1e-5)
