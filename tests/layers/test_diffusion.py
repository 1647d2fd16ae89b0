"""DDPM schedule with x₀-prediction posterior steps, the time embedding and the interest denoiser."""
import pytest
import torch

from ctrlab.layers.diffusion import DiffusionSchedule, InterestDenoiser, TimeEmbedding, sinusoidal_embedding


def test_schedule_is_the_linear_ddpm_schedule():
    s = DiffusionSchedule(1000, 1e-4, 0.02)
    beta = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    torch.testing.assert_close(s.beta[1:], beta.float())
    torch.testing.assert_close(s.alpha_bar[1:], torch.cumprod(1 - beta, 0).float())
    assert s.alpha_bar[0] == 1 and s.alpha_bar[-1] < 1e-4  # ᾱ_T ≈ 4e-5: nearly pure noise at T
    assert "beta" not in s.state_dict()  # derived, not saved
    with pytest.raises(ValueError, match="beta_start"):
        DiffusionSchedule(10, 0.1, 0.01)


@pytest.mark.parametrize("t", [1, 10, 300, 1000])
def test_forward_diffusion_mean_and_variance(t):
    """x_t ~ q(x_t|x_0): the empirical mean and variance match √ᾱ_t x_0 and 1 − ᾱ_t (Monte Carlo)."""
    s = DiffusionSchedule()
    n = 200_000
    x0 = torch.tensor([1.5, -0.5, 0.0])
    xt = s.q_sample(x0.expand(n, 3), t, torch.randn(n, 3))
    ab = s.alpha_bar[t].double()
    var = 1 - ab
    se_mean = (var / n).sqrt().clamp(min=1e-12)
    assert ((xt.double().mean(0) - ab.sqrt() * x0.double()).abs() < 5 * se_mean + 1e-7).all()
    se_var = var * (2 / n) ** 0.5
    assert ((xt.double().var(0) - var).abs() < 5 * se_var + 1e-9).all()
    # one step per row: a tensor of steps broadcasts like the int
    steps = torch.full((n,), t)
    torch.testing.assert_close(s.q_sample(x0.expand(n, 3), steps), s.q_sample(x0.expand(n, 3), t))


@pytest.mark.parametrize("t", [1, 2, 10, 500, 1000])
def test_posterior_step_is_the_true_posterior(t):
    """The step's mean/std are those of q(x_{t−1} | x_t, x_0): sampled along the forward chain,
    x_{t−1} − μ(x_t, x_0) has mean 0, variance σ_t², and no correlation with x_t; and without noise
    the chain's mean maps √ᾱ_t x_0 to √ᾱ_{t−1} x_0."""
    s = DiffusionSchedule()
    n = 200_000
    x0 = torch.full((n, 1), 0.7)
    prev = s.q_sample(x0, t - 1, torch.randn(n, 1))
    xt = (1 - s.beta[t]).sqrt() * prev + s.beta[t].sqrt() * torch.randn(n, 1)
    resid = (prev - s.posterior_step(xt, x0, t)).double()
    sigma = s.posterior_std[t].double()
    assert abs(resid.mean()) < 5 * sigma / n ** 0.5 + 1e-6
    assert abs(resid.var() - sigma ** 2) < 5 * sigma ** 2 * (2 / n) ** 0.5 + 1e-9
    if t > 1:
        assert abs(torch.corrcoef(torch.stack([resid[:, 0], xt[:, 0].double()]))[0, 1]) < 0.02
    one = torch.tensor([0.3, -1.2])
    torch.testing.assert_close(s.posterior_step(s.alpha_bar[t].sqrt() * one, one, t), s.alpha_bar[t - 1].sqrt() * one)
    assert s.posterior_std[1] == 0  # the last step adds no noise: x_0 = x̂_0


@pytest.mark.parametrize("stochastic", [False, True])
def test_exact_x0_predictor_makes_the_sampler_return_its_input(stochastic):
    s = DiffusionSchedule()
    x0 = torch.randn(5, 4, 8)
    seen = []

    def oracle(x, t):
        seen.append(t)
        return x0

    out = s.generate(x0, oracle, steps=10, stochastic=stochastic)
    torch.testing.assert_close(out, x0)
    assert seen == list(range(10, 0, -1))  # noised to step 10, reversed 10 -> 1
    # a wrong predictor does not (the property is not trivially true)
    assert not torch.allclose(s.generate(x0, lambda x, t: x0 + 0.1, 10), x0)
    with pytest.raises(ValueError, match="steps"):
        s.generate(x0, oracle, steps=0)


def test_evaluation_generation_is_deterministic_training_is_not():
    s = DiffusionSchedule()
    den = InterestDenoiser(8, 4)
    x0, q = torch.randn(3, 4, 8), torch.randn(3, 4, 8)
    def gen(stochastic):
        return s.generate(x0, lambda x, t: den(x0, x, t, q), 10, stochastic)
    torch.testing.assert_close(gen(False), gen(False), rtol=0, atol=0)
    assert not torch.allclose(gen(True), gen(True))


def test_denoiser_output_k_ignores_the_clean_token_k():
    """Copy k of the tokens has token k replaced by its noisy version: output k depends on the
    other channels' clean interests, on its own noisy input and on t, not on its own clean interest."""
    den = InterestDenoiser(8, 4, n_layers=2, num_heads=2)
    noisy = torch.randn(3, 4, 8)
    assert torch.equal(den(torch.randn(3, 4, 8), noisy, 5, torch.randn(3, 4, 8)), noisy)
    with torch.no_grad():  # untrained: x̂_0 = x_t exactly (zero-initialised output); trained-like weights below
        den.out.weight.normal_()
    clean, noisy, q = torch.randn(3, 4, 8), torch.randn(3, 4, 8), torch.randn(3, 4, 8)
    t = torch.randint(1, 1000, (3, 4))
    out = den(clean, noisy, t, q)
    assert out.shape == (3, 4, 8)
    changed = clean.clone()
    changed[:, 2] += 1.0
    moved = den(changed, noisy, t, q)
    torch.testing.assert_close(moved[:, 2], out[:, 2])
    assert not torch.allclose(moved[:, 0], out[:, 0])
    noisier = noisy.clone()
    noisier[:, 2] += 1.0
    assert not torch.allclose(den(clean, noisier, t, q)[:, 2], out[:, 2])
    assert not torch.allclose(den(clean, noisy, t + 1, q), out)  # the step matters
    assert not torch.allclose(den(clean, noisy, t, q + 1), out)  # and the condition
    # an int step is the same step for every row and channel
    torch.testing.assert_close(den(clean, noisy, 7, q), den(clean, noisy, torch.full((3, 4), 7), q))


def test_time_embedding():
    e = sinusoidal_embedding(torch.tensor([0, 5]), 7)
    assert e.shape == (2, 7)
    torch.testing.assert_close(e[0], torch.tensor([0, 0, 0, 1, 1, 1, 0.0]))
    assert torch.allclose(e[1, :3], torch.sin(5 * torch.exp(-torch.log(torch.tensor(1e4)) * torch.arange(3) / 3)))
    assert TimeEmbedding(6)(torch.tensor([1, 2, 3])).shape == (3, 6)
