using PyNoDeTa: PyNoDeTa, METHODS, solve_flat
using OrdinaryDiffEqTsit5: Tsit5
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
        @test res.u_finite
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

    @testset "an OrdinaryDiffEq algorithm object in place of a method name" begin
        by_name = solve_flat(rotation!, [1.0, 0.5], [0.0, 1.0, 2.0], "tsit5"; reltol = 1e-8, abstol = 1e-10,
            maxiters = 10^5)
        by_alg = solve_flat(rotation!, [1.0, 0.5], [0.0, 1.0, 2.0], Tsit5(); reltol = 1e-8, abstol = 1e-10,
            maxiters = 10^5)
        @test by_alg.u == by_name.u && by_alg.nf == by_name.nf
        @test_throws ArgumentError solve_flat(rotation!, [1.0, 0.5], [0.0, 1.0], 42;
            reltol = 1e-6, abstol = 1e-8, maxiters = 10)
    end

    @testset "a Jacobian from the caller replaces finite differences ($method)" for method in ("rodas5", "kencarp4")
        calls = Ref(0)
        jacobian!(J, u, t) = (calls[] += 1; J .= [0.0 1.0; -1.0 0.0]; nothing)
        product!(Jv, v, u, t) = (Jv[1] = v[2]; Jv[2] = -v[1]; nothing)
        res = solve_flat(rotation!, [1.0, 0.5], [0.0, 2.0], method; jac = jacobian!, jvp = product!,
            reltol = 1e-8, abstol = 1e-10, maxiters = 10^5)
        @test res.retcode == "Success"
        @test calls[] > 0 && res.njacs > 0
        @test res.u[:, end] ≈ rotated([1.0, 0.5], 2.0) atol = 1e-5
        rhs = PyNoDeTa.rhs_function(rotation!, jacobian!, product!)
        @test rhs.jac isa PyNoDeTa.PythonJacobian && rhs.jvp isa PyNoDeTa.PythonJVP
        Jv = zeros(2)
        rhs.jvp(Jv, [1.0, 2.0], [0.0, 0.0], nothing, 0.0)
        @test Jv == [2.0, -1.0]
    end

    @testset "the wrapper types do not depend on the function they hold" begin
        # What lets the precompiled workload serve Python right-hand sides.
        decay!(du, u, t) = (du .= -u; nothing)
        @test typeof(PyNoDeTa.rhs_function(decay!, nothing, nothing)) ==
              typeof(PyNoDeTa.rhs_function(rotation!, nothing, nothing))
    end

    @testset "return codes" begin
        res = solve_flat(rotation!, [1.0, 0.0], [0.0, 1.0, 100.0], "tsit5";
            reltol = 1e-10, abstol = 1e-12, maxiters = 20)
        @test res.retcode == "MaxIters"
        @test res.t[1] == 0.0 && res.t_reached < 100.0    # stopped early; the start is kept
        blowup!(du, u, t) = (du[1] = u[1]^2; nothing)    # u(t) = 1 / (1 - t): blows up at t = 1
        res = solve_flat(blowup!, [1.0], [0.0, 2.0], "dopri5"; reltol = 1e-6, abstol = 1e-8, maxiters = 10^6)
        @test res.retcode in ("DtLessThanMin", "Unstable", "DtNaN")
        # Within rtol of the singularity on either side (Dormand–Prince stops at 1.00000029 here).
        @test 0.99 < res.t_reached < 1.01
        @test_throws ArgumentError solve_flat(rotation!, [1.0, 0.0], [0.0, 1.0], "euler";
            reltol = 1e-6, abstol = 1e-8, maxiters = 10)
    end
end
