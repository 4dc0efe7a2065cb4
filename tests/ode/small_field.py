"""A small float64 field shared by the tests of the compiled and the graphed step."""

import torch


class SmallField(torch.nn.Module):
    """A tanh MLP field with a time input, stiff enough to reject some steps."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).double()
        with torch.no_grad():
            for p in self.net.parameters():
                p.mul_(3.0)

    def forward(self, t, y):
        return self.net(torch.cat([y, t.reshape(-1, 1).expand(y.shape[0], 1)], dim=1))  # t: 0-d or (batch,)
