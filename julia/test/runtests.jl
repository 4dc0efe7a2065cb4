using PyNoDeTa: METHODS, solve_flat
using Test

# du/dt = A u with A = [0 1; -1 0]: a rotation, u(t) = R(t) u0 exactly.
rotation!(du, u, t) = (du[1] = u[2]; du[2] = -u[1]; nothing)
rotated(u0, t) = [cos(t) * u0[1] + sin(t) * u0[2], -sin(t) * u0[1] + cos(t) * u0[2]]

@testset "PyNoDeTa" begin
    @testset "accuracy and output times: $method" for method in sort!(collect(keys(METHODS)))
        u0 = [1.0, 0.5]
        times = collect(range(0.0, 2.0; length = 5))
        res = solve_flat(rotation!, u0, times, method; reltol = 1e-8, abstol = 1e-10, maxiters = 10^5)
        @test res.retcode == "Success"
        @test res.t == times
        @test size(res.u) == (2, length(times))
        exact = reduce(hcat, rotated(u0, t) for t in times)
        @test maximum(abs, res.u - exact) < 1e-5
        @test res.naccept > 0 && res.nf > 0
        @test length(res.step_sizes) == res.naccept
        @test sum(res.step_sizes) ≈ 2.0
    end

    @testset "integrates backwards when times decrease" begin
        u0 = [1.0, 0.5]
        times = [2.0, 1.0, 0.0]
        res = solve_flat(rotation!, u0, times, "tsit5"; reltol = 1e-9, abstol = 1e-11, maxiters = 10^5)
        @test res.retcode == "Success"
        @test res.u[:, end] ≈ rotated(u0, -2.0) atol = 1e-6
    end

    @testset "per-element tolerances and Float32 state" begin
        res = solve_flat(rotation!, Float32[1, 0], [0.0, 1.0], "dopri5";
            reltol = [1e-5, 1e-5], abstol = [1e-7, 1e-7], maxiters = 10^5)
        @test eltype(res.u) == Float32
        @test res.u[:, end] ≈ rotated([1.0, 0.0], 1.0) atol = 1e-4
    end

    @testset "convergence order of $method" for (method, order) in (("dopri5", 5), ("vern7", 7))
        # Error vs step size on a fixed grid approximates the method's order.
        errors = map((0.2, 0.1)) do dt
            res = solve_flat(rotation!, [1.0, 0.0], [0.0, 1.0], method; reltol = 1.0, abstol = 1.0,
                maxiters = 10^5, first_step = dt, min_step = dt, max_step = dt)
            maximum(abs, res.u[:, end] - rotated([1.0, 0.0], 1.0))
        end
        @test log2(errors[1] / errors[2]) > order - 0.5
    end

    @testset "return codes" begin
        res = solve_flat(rotation!, [1.0, 0.0], [0.0, 1.0, 100.0], "tsit5";
            reltol = 1e-10, abstol = 1e-12, maxiters = 20)
        @test res.retcode == "MaxIters"
        @test res.t[1] == 0.0 && res.t_reached < 100.0    # stopped early; the start is kept
        blowup!(du, u, t) = (du[1] = u[1]^2; nothing)    # u(t) = 1 / (1 - t): blows up at t = 1
        res = solve_flat(blowup!, [1.0], [0.0, 2.0], "dopri5"; reltol = 1e-6, abstol = 1e-8, maxiters = 10^6)
        @test res.retcode in ("DtLessThanMin", "Unstable", "DtNaN")
        @test 0.99 < res.t_reached <= 1.0
        @test_throws ArgumentError solve_flat(rotation!, [1.0, 0.0], [0.0, 1.0], "euler";
            reltol = 1e-6, abstol = 1e-8, maxiters = 10)
    end
end
